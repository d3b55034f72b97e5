"""DiT (Peebles & Xie 2023), written for apples-to-apples comparisons with LaMamba-Diff: same call
signature ``model(x, t, y) -> (N, 2C, H, W)``, same embedders, same guidance helper, attention through
``scaled_dot_product_attention`` (the fused kernels on GPUs)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lamamba.models.layers import (ClassifierFreeGuidanceMixin, LabelEmbedder, Mlp, TimestepEmbedder,
                                   check_fields, check_input, dit_init, modulate, sincos_pos_embed_2d)


@dataclass
class DiTConfig:
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """One clear ValueError for any value the model cannot be built with."""
        check_fields("DiT", positive=dict(hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads,
                                          patch_size=self.patch_size, input_size=self.input_size,
                                          in_channels=self.in_channels),
                     non_negative=dict(num_classes=self.num_classes), positive_real=dict(mlp_ratio=self.mlp_ratio),
                     probability=dict(class_dropout_prob=self.class_dropout_prob))
        if self.input_size % self.patch_size:
            raise ValueError(f"input size {self.input_size} is not divisible by the patch size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"DiT: hidden_size must be a multiple of 4 (sin-cos positional embedding), got "
                             f"{self.hidden_size}")


class Attention(nn.Module):
    """Multi-head self-attention with a qkv bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:                                       # (N, T, D)
        Nb, T, D = x.shape
        q, k, v = self.qkv(x).view(Nb, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)                               # (N, h, T, hd)
        return self.proj(x.transpose(1, 2).reshape(Nb, T, D))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(ClassifierFreeGuidanceMixin, nn.Module):
    """Diffusion transformer: patchify, fixed sin-cos positional embedding, adaLN-Zero blocks, unpatchify."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.in_channels, self.num_classes = cfg.in_channels, cfg.num_classes
        self.out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.grid = cfg.input_size // cfg.patch_size
        D = cfg.hidden_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob if cfg.num_classes else 0.0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2, D), requires_grad=False)  # fixed
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(D, cfg.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        dit_init(self, self.x_embedder, self.t_embedder, self.y_embedder)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size, self.grid, self.grid)[None])
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        p, C, G = self.config.patch_size, self.out_channels, self.grid
        x = x.view(x.shape[0], G, G, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], C, G * p, G * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        cfg = self.config
        check_input(x, t, y, self.in_channels, (cfg.input_size, cfg.input_size), self.num_classes, "DiT")
        if y is None or self.num_classes == 0:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed       # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)                # (N, D)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))                            # (N, 2C, H, W)
