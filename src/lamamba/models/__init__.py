"""LaMamba-Diff and the DiT baselines, behind one registry."""
from lamamba.models.dit import DiT, DiTConfig
from lamamba.models.lamamba import LaMambaBlock, LaMambaConfig, LaMambaDiff, SS2D, WindowAttention
from lamamba.models.compile import compile_model
from lamamba.models.registry import create_model, list_models, model_config, model_from_config

__all__ = ["compile_model", "create_model", "list_models", "model_config", "model_from_config", "LaMambaDiff",
           "LaMambaConfig", "LaMambaBlock", "SS2D", "WindowAttention", "DiT", "DiTConfig"]
