"""Numerical building blocks: the selective scan, the continuous scan paths, window attention."""
from lamamba.ops.selective_scan import scan_backend, selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "scan_backend"]
