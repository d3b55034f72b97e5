"""Training machinery behind ``lamamba train``: configuration and presets, the DDP loop, EMA, atomic
checkpoints, activation checkpointing, logging.

Typical library use mirrors the command line::

    from lamamba.training import Trainer, resolve_config
    config = resolve_config({"preset": "digits", "max_steps": 100})
"""
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import PRESETS, TrainConfig, resolve_config
from lamamba.distributed import DistEnv, init_distributed, shutdown_distributed  # process setup (lower level)
from .ema import EMA
from .grad_checkpoint import enable_gradient_checkpointing
from .logs import RunLogger
from .loop import Callback, Trainer, TrainingDiverged

__all__ = [
    "EMA", "PRESETS", "Callback", "DistEnv", "RunLogger", "TrainConfig", "Trainer", "TrainingDiverged",
    "capture_rng_state", "enable_gradient_checkpointing", "init_distributed", "load_checkpoint", "resolve_config",
    "restore_rng_state", "save_checkpoint", "shutdown_distributed",
]
