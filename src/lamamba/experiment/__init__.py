"""Small-scale reproductions of the paper's comparisons."""
