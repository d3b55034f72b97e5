"""lamamba: LaMamba-Diff, a linear-time diffusion backbone (Mamba + local attention U-Net), with DiT
baselines, training, sampling and evaluation."""
from lamamba.models import create_model, list_models
from lamamba.pretrained import load_pretrained

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_pretrained", "__version__"]
