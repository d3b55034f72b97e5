"""Layers shared by LaMamba-Diff and the DiT baseline: embedders, AdaLN modulation, FFN, positional
embeddings, classifier-free guidance."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN: ``x * (1 + scale) + shift`` (shift/scale broadcast over the token axes)."""
    return torch.addcmul(shift, x, 1 + scale)


#################################################################################
#                     Embedding layers for timesteps and class labels           #
#################################################################################

class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (integer or float) timestep, then a two-layer MLP (ADM, DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """(N,) timesteps -> (N, dim) features ``[cos(t * f_i), sin(t * f_i)]``, ``f_i = max_period^(-i/half)``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))                          # (N, D)


class LabelEmbedder(nn.Module):
    """Class-label table with one extra row, index ``num_classes``, for the classifier-free-guidance null
    class. In training mode labels are replaced by the null class with probability ``dropout_prob``.
    ``num_classes = 0`` (unconditional): one row, a learned constant, used for every sample."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        if self.num_classes > 0 and ((train and self.dropout_prob > 0) or force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                                 Feed-forward                                  #
#################################################################################

class Mlp(nn.Module):
    """FFN: Linear -> GELU -> Linear with hidden width ``ratio * dim``."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


#################################################################################
#                      2-D sine-cosine positional embedding                     #
#################################################################################

def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """(grid_h * grid_w, dim) table, rows row-major over the grid (MAE/DiT convention): the first half of
    the channels encodes the column coordinate, the second half the row; each half is
    ``[sin(pos * w_k)]_k`` then ``[cos(pos * w_k)]_k`` with ``w_k = 10000^(-k / (dim/4))``."""
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


#################################################################################
#                                Initialisation                                 #
#################################################################################

def dit_init(model: nn.Module, patch_conv: nn.Conv2d, t_embedder: TimestepEmbedder,
             y_embedder: LabelEmbedder) -> None:
    """DiT's base initialisation (also LaMamba-Diff's, SPEC 5.11 steps 1, 2 and 4): Xavier-uniform weights
    and zero biases for every Linear, Xavier-uniform for the flattened patch-embedding kernel, N(0, 0.02)
    for the label table and the timestep MLP. Zeroing the AdaLN and output layers is left to the model."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    w = patch_conv.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(patch_conv.bias)
    nn.init.normal_(y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)


#################################################################################
#                         Classifier-free guidance                              #
#################################################################################

class ClassifierFreeGuidanceMixin:
    """``forward_with_cfg`` for models with ``forward(x, t, y) -> (N, 2C or C, H, W)``.

    The batch holds the conditional half first and the unconditional half (labels = ``num_classes``)
    second; only the first half of ``x`` is used (both halves get the same noise). The guided noise
    ``eps_u + s * (eps_c - eps_u)`` replaces the noise channels of both halves. ``guided_channels``
    chooses how many output channels are guided: ``None`` = all noise channels (the released
    LaMamba-Diff code); ``3`` reproduces DiT's convention (guide only the first three latent channels).
    The learned-variance channels are never guided (each half keeps its own).
    """

    in_channels: int

    def forward_with_cfg(self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float,
                         guided_channels: int | None = None) -> Tensor:
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self(combined, t, y)
        g = self.in_channels if guided_channels is None else guided_channels
        if not 0 < g <= self.in_channels:
            raise ValueError(f"guided_channels must be in 1..{self.in_channels}, got {g}")
        eps, rest = model_out[:, :g], model_out[:, g:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


def check_fields(model_name: str, *, positive: dict | None = None, non_negative: dict | None = None,
                 positive_real: dict | None = None, probability: dict | None = None) -> None:
    """Raise one clear ValueError for the first config value of the wrong type or range.

    Each argument maps field names to values: ``positive`` / ``non_negative`` integers, ``positive_real``
    finite numbers > 0, ``probability`` numbers in [0, 1].
    """
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    checks = [(positive, lambda v: is_int(v) and v >= 1, "a positive integer"),
              (non_negative, lambda v: is_int(v) and v >= 0, "an integer >= 0"),
              (positive_real, lambda v: is_real(v) and v > 0, "a finite number > 0"),
              (probability, lambda v: is_real(v) and 0 <= v <= 1, "a probability in [0, 1]")]
    for fields, ok, what in checks:
        for name, value in (fields or {}).items():
            if not ok(value):
                raise ValueError(f"{model_name}: {name} must be {what}, got {value!r}")


def check_input(x: Tensor, t: Tensor, y: Tensor | None, in_channels: int, latent_size: tuple[int, int],
                num_classes: int, model_name: str) -> None:
    """Raise a clear ValueError for inputs the model cannot take (no device sync)."""
    if x.dim() != 4:
        raise ValueError(f"{model_name}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model_name}: built for {in_channels} input channels, got {x.shape[1]} "
                         f"(create the model with in_channels={x.shape[1]})")
    if tuple(x.shape[2:]) != tuple(latent_size):
        raise ValueError(f"{model_name}: built for {latent_size[0]}x{latent_size[1]} inputs, got "
                         f"{x.shape[2]}x{x.shape[3]} (create the model with the matching image_size)")
    if t.shape != (x.shape[0],):
        raise ValueError(f"{model_name}: t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    if num_classes > 0 and (y is None or y.shape != (x.shape[0],)):
        raise ValueError(f"{model_name}: class-conditional model needs labels y of shape ({x.shape[0]},)")
    # eager CPU only: on GPUs the check would cost a sync, in a compiled graph a graph break
    if y is not None and num_classes > 0 and y.device.type == "cpu" and len(y) and \
            not torch.compiler.is_compiling() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(f"{model_name}: labels must be in [0, {num_classes}] ({num_classes} = the null class of "
                         f"guidance), got {y.min().item()}..{y.max().item()}")
