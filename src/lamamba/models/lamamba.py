"""LaMamba-Diff (Fu, Chen, Yu 2024): a U-Net of LaMamba blocks (SS2D Mamba + shifted-window attention +
FFN, each with AdaLN-Zero) for diffusion in latent or pixel space.

Shapes in comments: N batch, H x W the map of the current stage, L = H*W, D the stage width, channels-last
``(N, H, W, D)`` inside the network. Paper section numbers refer to the paper, "SPEC" to docs of the
released code (parity notes in ``docs/MODEL.md``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lamamba.models.layers import (ClassifierFreeGuidanceMixin, LabelEmbedder, Mlp, TimestepEmbedder,
                                   check_fields, check_input, dit_init, modulate, sincos_pos_embed_2d)
from lamamba.ops.scan_paths import NUM_PATHS
from lamamba.ops.gated_norm import gated_norm
from lamamba.ops.ss2d_scan import ss2d_scan_directions
from lamamba.ops.time_steps import dt_projection
from lamamba.ops.fused_adaln import add_norm_modulate
from lamamba.ops.window_attention import window_attention
from lamamba.ops.window_layout import attention_tables


@dataclass
class LaMambaConfig:
    """Every architectural choice of LaMamba-Diff. Defaults reproduce the paper's model (SPEC Part A)."""

    embed_dim: int = 96                        # D0, width of the first stage; stage widths double at merges
    depths: tuple[int, ...] = (2, 2, 2, 0)     # encoder blocks per stage (a 0 stage is an identity)
    decoder_depths: tuple[int, ...] | None = None  # decoder blocks per stage, deepest first; None: SD rule
                                                   # (encoder depth + 1; 0 for an empty deepest stage, SPEC 5.1)
    bottleneck_depth: int = 1
    cond_dim: int = 192                        # width of the timestep + class embedding
    num_heads: int = 6                         # attention heads, the same count in every stage
    d_state: int = 1                           # SSM state size N (released config 1; 16 gives Table 2 GFLOPs)
    ssm_ratio: float = 2.0                     # d_inner = ssm_ratio * D
    mlp_ratio: float = 4.0
    window_size: int = 8
    num_downsamples: int = 2                   # patch mergings after encoder stages 1..k (Table 7: 1x / 2x / 3x)
    attention: str = "window"                  # "window" | "global" | "none" (Table 5)
    shift: bool = True                         # alternate window shift on odd blocks (Table 5 "w/o shifting")
    qk_norm: bool = False                      # LayerNorm on queries and keys per head (not in the paper; opt-in
                                               # remedy for the failed samples, docs/RESULTS.md)
    skip: str = "add"                          # U-Net skips: "add" | "concat" (Table 7)
    layout: str = "unet"                       # "unet" | "isotropic" (Table 7: DiT-like stack of LaMamba blocks)
    patch_size: int = 1                        # tokens are patch_size x patch_size pixels of the input
    isotropic_depth: int = 8                   # blocks in the isotropic layout (width embed_dim)
    learn_sigma: bool = True                   # output 2C channels: noise and variance interpolation
    class_dropout_prob: float = 0.1
    # set by create_model
    input_size: int = 32                       # latent side (image_size // 8 for the SD VAE)
    in_channels: int = 4
    num_classes: int = 1000
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the registry name)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_decoder_depths(self) -> tuple[int, ...]:
        """``decoder_depths``, or the released code's rule: reversed encoder depths + 1, except that an empty
        deepest encoder stage keeps an empty first decoder stage (S/B: (2, 2, 2, 0) -> (0, 3, 3, 3))."""
        if self.decoder_depths is not None:
            return tuple(self.decoder_depths)
        rule = [d + 1 for d in reversed(self.depths)]
        if self.depths[-1] == 0:
            rule[0] = 0
        return tuple(rule)

    def validate(self) -> None:
        """One clear ValueError for any value the model cannot be built with."""
        check_fields("LaMamba-Diff", positive=dict(
            embed_dim=self.embed_dim, cond_dim=self.cond_dim, num_heads=self.num_heads, d_state=self.d_state,
            window_size=self.window_size, patch_size=self.patch_size, isotropic_depth=self.isotropic_depth,
            input_size=self.input_size, in_channels=self.in_channels),
            non_negative=dict(bottleneck_depth=self.bottleneck_depth, num_downsamples=self.num_downsamples,
                              num_classes=self.num_classes),
            positive_real=dict(ssm_ratio=self.ssm_ratio, mlp_ratio=self.mlp_ratio),
            probability=dict(class_dropout_prob=self.class_dropout_prob))
        for name in ("depths", "decoder_depths"):
            value = getattr(self, name)
            if name == "decoder_depths" and value is None:
                continue
            if not isinstance(value, (tuple, list)) or not value or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
                raise ValueError(f"LaMamba-Diff: {name} must be a list of block counts >= 0, one per stage, "
                                 f"e.g. [2,2,2,0]; got {value!r}")
        if self.decoder_depths is not None and len(self.decoder_depths) != len(self.depths):
            raise ValueError(f"LaMamba-Diff: decoder_depths needs {len(self.depths)} entries (deepest first), got "
                             f"{self.decoder_depths!r}")
        if int(self.ssm_ratio * self.embed_dim) < 1 or int(self.mlp_ratio * self.embed_dim) < 1:
            raise ValueError(f"LaMamba-Diff: ssm_ratio and mlp_ratio x embed_dim {self.embed_dim} must give a "
                             "width of at least 1")
        for name in ("shift", "learn_sigma", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LaMamba-Diff: {name} must be true or false, got {getattr(self, name)!r}")
        if self.layout not in ("unet", "isotropic"):
            raise ValueError(f"layout must be 'unet' or 'isotropic', got {self.layout!r}")
        if self.attention not in ("window", "global", "none"):
            raise ValueError(f"attention must be 'window', 'global' or 'none', got {self.attention!r}")
        if self.skip not in ("add", "concat"):
            raise ValueError(f"skip must be 'add' or 'concat', got {self.skip!r}")
        if self.layout == "unet" and not 0 <= self.num_downsamples <= len(self.depths) - 1:
            raise ValueError(f"num_downsamples must be in 0..{len(self.depths) - 1}")
        stride = self.patch_size * (2 ** self.num_downsamples if self.layout == "unet" else 1)
        if self.input_size % stride:
            raise ValueError(f"input size {self.input_size} is not divisible by {stride} (patch size "
                             f"{self.patch_size} x 2^{self.num_downsamples} downsamplings); use a latent "
                             f"size that is a multiple of {stride}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


#################################################################################
#                          SS2D: 2-D selective scan (VSSM)                      #
#################################################################################

class SS2D(nn.Module):
    """VMamba's SS2D with the four spatially continuous scan paths (paper section 4.1, SPEC section 3).

    in_proj -> (x, z); x: depthwise 3x3 conv -> SiLU -> four-direction selective scan -> sum -> LayerNorm;
    gated by SiLU(z) (the released code keeps Mamba's gate branch) -> out_proj.
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, math.ceil(dim / 16)
        K, R, N = NUM_PATHS, self.dt_rank, d_state
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=False)
        # the weight in the layout of its gradient (the conv runs on channels-last maps): DDP's buckets take the
        # parameter's strides, and a gradient of other strides is copied with a warning in every run
        self.conv2d.weight = nn.Parameter(self.conv2d.weight.detach().to(memory_format=torch.channels_last))
        # per-direction projections, kept as bare parameters with the released code's names and layout
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, N))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's "v0" initialisation (SPEC 3.4): S4D-real A, unit D, dt in [dt_min, dt_max]."""
        dt_min, dt_max, floor = self._dt_range
        bound = 1 / math.sqrt(self.d_inner)                   # nn.Linear's default init of x_proj
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(n).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, u: Tensor) -> Tensor:                                       # (N, H, W, D)
        Nb, H, W, _ = u.shape
        K, R, Ns, d = NUM_PATHS, self.dt_rank, self.d_state, self.d_inner
        x, z = self.in_proj(u).chunk(2, dim=-1)                                   # (N, H, W, d) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))                            # (N, d, H, W)
        x = x.permute(0, 2, 3, 1).reshape(Nb, H * W, d)                           # (N, L, d)
        # every projection acts per token, so it is computed once in pixel order (see ops/ss2d_scan.py)
        x_dbl = F.linear(x, self.x_proj_weight.reshape(K * (R + 2 * Ns), d)).view(Nb, H * W, K, R + 2 * Ns)
        dt_raw, Bs, Cs = x_dbl.split([R, Ns, Ns], dim=-1)                         # (N, L, K, R|N|N)
        dts = dt_projection(dt_raw, self.dt_projs_weight)                          # (N, L, K, d)
        # the scan's backward recomputes dts from dt_raw (R/d of its size) instead of keeping them
        ys = ss2d_scan_directions(x, dts, -torch.exp(self.A_logs.float()), Bs, Cs, self.Ds.float(),
                                  self.dt_projs_bias.float().flatten(), H, W,
                                  delta_from=(dt_raw, self.dt_projs_weight))           # (N, L, K, d)
        # sum over directions (fp32) -> out_norm -> * SiLU(z), fused (ops/gated_norm.py); z is read in place
        # (a view); the result has the unfused code's dtype, LayerNorm(fp32).to(u.dtype) * silu(z)
        y = gated_norm(ys, z.reshape(Nb, H * W, d), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps,
                       out_dtype=torch.promote_types(u.dtype, z.dtype))          # (N, L, d)
        return self.out_proj(y.view(Nb, H, W, d))                                 # (N, H, W, D)


#################################################################################
#                     Window attention with relative position bias              #
#################################################################################

class WindowAttention(nn.Module):
    """Swin (shifted-)window multi-head self-attention with a relative position bias (paper section 4.1)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, qk_norm: bool = False,
                 side: int | None = None):
        super().__init__()
        self.num_heads, self.window_size, self.shift, self.side = num_heads, window_size, shift, side
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # the index and mask of a side x side map, as buffers (not saved): compiled graphs read them like weights
        device = self.relative_position_bias_table.device                       # meta under torch.device("meta")
        index, mask = attention_tables(side, side, window_size, shift, device) if side else (None, None)
        # copies: the module's buffers must not alias the shared cache's tensors
        self.register_buffer("relative_position_index", None if index is None else index.clone(), persistent=False)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # optional: queries and keys layer-normalised per head (bounded logits; Dehghani et al. 2023)
        self.q_norm = nn.LayerNorm(dim // num_heads) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim // num_heads) if qk_norm else None
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor) -> Tensor:                                       # (N, H, W, D)
        qk_norm = None
        if self.q_norm is not None:
            qk_norm = (self.q_norm.weight, self.q_norm.bias, self.k_norm.weight, self.k_norm.bias)
        own = self.relative_position_index is not None and x.shape[1] == x.shape[2] == self.side
        return window_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
                                self.relative_position_bias_table, self.num_heads, self.window_size,
                                self.shift, qk_norm=qk_norm,
                                tables=(self.relative_position_index, self.attn_mask) if own else None)


#################################################################################
#                               The LaMamba block                               #
#################################################################################

class LaMambaBlock(nn.Module):
    """SS2D -> window attention -> FFN, each pre-norm with AdaLN (shift, scale) and a gate (paper Fig. 3).

    ``condition_projection`` maps the conditioning vector to the block width when they differ, and in
    every decoder block (released code). ``adaLN_modulation`` is zero-initialised, so the block starts as
    the identity.
    """

    def __init__(self, dim: int, cond_dim: int, num_heads: int, window_size: int, shift: int,
                 attention: bool, d_state: int, ssm_ratio: float, mlp_ratio: float, project_condition: bool,
                 qk_norm: bool = False, side: int | None = None):
        super().__init__()
        self.condition_projection = nn.Linear(cond_dim, dim) if project_condition else nn.Identity()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.has_attention = attention
        if attention:
            self.norm_swin = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, num_heads, window_size, shift, qk_norm, side)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.num_mod = 9 if attention else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.num_mod * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:                            # x (N, H, W, D), c (N, cond)
        """``x = x + gate_i * branch_i(modulate(norm_i(x), shift_i, scale_i))`` for SS2D, attention, MLP.

        Each gated residual add and the next branch's LayerNorm + modulation run as one fused op
        (``add_norm_modulate``); under autocast the modulated activations come out in the autocast dtype,
        which the branches' first matrix multiply would cast them to anyway.
        """
        mod = self.adaLN_modulation(self.condition_projection(c))                 # (N, 9D)
        shift_ssm, scale_ssm, gate_ssm, *rest = mod.chunk(self.num_mod, dim=-1)   # (N, D) views
        kind = x.device.type
        act = torch.get_autocast_dtype(kind) if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind) else None
        _, h = add_norm_modulate(x, None, None, self.norm.weight, self.norm.bias, shift_ssm, scale_ssm,
                                 self.norm.eps, act)
        branch, gate = self.op(h), gate_ssm
        if self.has_attention:
            shift_attn, scale_attn, gate_attn = rest[:3]
            x, h = add_norm_modulate(x, branch, gate, self.norm_swin.weight, self.norm_swin.bias, shift_attn,
                                     scale_attn, self.norm_swin.eps, act)
            branch, gate = self.attn(h), gate_attn
        shift_mlp, scale_mlp, gate_mlp = rest[-3:]
        x, h = add_norm_modulate(x, branch, gate, self.norm2.weight, self.norm2.bias, shift_mlp, scale_mlp,
                                 self.norm2.eps, act)
        return x + gate_mlp[:, None, None] * self.mlp(h)


#################################################################################
#                          Down- and up-sampling, stages                        #
#################################################################################

class PatchMerging2D(nn.Module):
    """Swin patch merging: 2x2 neighbours concatenated -> LayerNorm(4C) -> Linear(4C -> out)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:                                       # (N, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))                                       # (N, H/2, W/2, out)


class PatchExpanding2D(nn.Module):
    """Swin-Unet patch expanding: Linear(C -> scale^2 * C / scale) then pixel shuffle, LayerNorm(C/scale).
    With ``scale = 1`` it is the released code's extra ``Linear(C -> C) + LayerNorm`` before the output."""

    def __init__(self, dim: int, scale: int = 2):
        super().__init__()
        self.scale, self.out_dim = scale, dim // scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: Tensor) -> Tensor:                                       # (N, H, W, C)
        Nb, H, W, _ = x.shape
        s = self.scale
        x = self.expand(x).view(Nb, H, W, s, s, self.out_dim)                     # feature (p1, p2, c')
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(Nb, H * s, W * s, self.out_dim)  # -> pixel (sh+p1, sw+p2)
        return self.norm(x)


class Stage(nn.Module):
    """A sequence of LaMamba blocks at one resolution; odd blocks use the shifted windows."""

    def __init__(self, depth: int, dim: int, cfg: LaMambaConfig, decoder: bool, window_size: int, side: int):
        super().__init__()
        shift = window_size // 2 if cfg.shift and cfg.attention == "window" else 0
        self.blocks = nn.ModuleList([
            LaMambaBlock(dim, cfg.cond_dim, cfg.num_heads, window_size, shift if i % 2 else 0,
                         cfg.attention != "none", cfg.d_state, cfg.ssm_ratio, cfg.mlp_ratio,
                         project_condition=decoder or dim != cfg.cond_dim, qk_norm=cfg.qk_norm, side=side)
            for i in range(depth)])

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, c)
        return x


class ConcatSkip(nn.Module):
    """Skip by concatenation (Table 7 ablation): concat along channels -> Linear(2C -> C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fuse = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.fuse(torch.cat([x, skip], dim=-1))


#################################################################################
#                                  The network                                  #
#################################################################################

class LaMambaDiff(ClassifierFreeGuidanceMixin, nn.Module):
    """LaMamba-Diff: ``forward(x, t, y) -> (N, 2C, H, W)`` (noise and variance interpolation values).

    U-Net layout (paper section 4.2, Table 1): 1x1 patch embedding + LayerNorm + learnable sin-cos
    positional embedding; encoder stages with patch merging after the first ``num_downsamples``; a
    bottleneck with an outer residual ``x + mid(x)``; decoder stages with patch expanding, each first
    adding the matching encoder output (before merging); final ``Linear + LayerNorm``, AdaLN and a
    zero-initialised linear layer. The isotropic layout (Table 7) is a DiT-like stack of LaMamba blocks.
    """

    def __init__(self, config: LaMambaConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.in_channels, self.num_classes = cfg.in_channels, cfg.num_classes
        self.out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        p, D0 = cfg.patch_size, cfg.embed_dim
        self.grid = cfg.input_size // p

        self.t_embedder = TimestepEmbedder(cfg.cond_dim)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.cond_dim,
                                        cfg.class_dropout_prob if cfg.num_classes > 0 else 0.0)
        self.patch_embed = nn.ModuleDict(dict(proj=nn.Conv2d(cfg.in_channels, D0, kernel_size=p, stride=p),
                                              norm=nn.LayerNorm(D0)))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid, self.grid, D0))

        if cfg.layout == "isotropic":
            win = self._window(self.grid)
            self.layers = nn.ModuleList([Stage(cfg.isotropic_depth, D0, cfg, decoder=False, window_size=win,
                                               side=self.grid)])
            self.dims = [D0]
        else:
            self._build_unet(cfg)

        # final layer (SPEC 5.9): Linear + LayerNorm, then AdaLN (shift, scale) and the output linear
        self.final_up = PatchExpanding2D(D0, scale=1)
        self.final_condition_projection = nn.Linear(cfg.cond_dim, D0)
        self.final_norm = nn.LayerNorm(D0, elementwise_affine=False, eps=1e-6)
        self.final_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D0, 2 * D0))
        self.final_linear = nn.Linear(D0, p * p * self.out_channels)
        self.initialize_weights()

    def _window(self, side: int) -> int:
        """Attention window for a stage of this side: the whole map for global attention."""
        return side if self.config.attention == "global" else self.config.window_size

    def _build_unet(self, cfg: LaMambaConfig) -> None:
        n = len(cfg.depths)
        dims = [cfg.embed_dim]
        for i in range(n - 1):                          # widths double where the map is merged
            dims.append(dims[-1] * 2 if i < cfg.num_downsamples else dims[-1])
        sides = [self.grid // 2 ** min(i, cfg.num_downsamples) for i in range(n)]
        dec_depths = cfg.resolved_decoder_depths()
        self.dims, self.sides = dims, sides
        self.layers = nn.ModuleList([Stage(cfg.depths[i], dims[i], cfg, False, self._window(sides[i]), sides[i])
                                     for i in range(n)])
        self.downsamples = nn.ModuleList([PatchMerging2D(dims[i], dims[i + 1]) if i < cfg.num_downsamples
                                          else nn.Identity() for i in range(n)])
        self.mid_layer = Stage(cfg.bottleneck_depth, dims[-1], cfg, False, self._window(sides[-1]), sides[-1])
        # decoder stage j works at encoder stage i = n-1-j; it upsamples first where encoder stage i merged
        self.upsamples = nn.ModuleList([PatchExpanding2D(dims[i + 1]) if i < cfg.num_downsamples
                                        else nn.Identity() for i in reversed(range(n))])
        self.layers_up = nn.ModuleList([Stage(dec_depths[j], dims[n - 1 - j], cfg, True,
                                              self._window(sides[n - 1 - j]), sides[n - 1 - j]) for j in range(n)])
        self.skip_fuse = nn.ModuleList([ConcatSkip(dims[n - 1 - j]) if cfg.skip == "concat" else nn.Identity()
                                        for j in range(n)])

    def initialize_weights(self) -> None:
        """SPEC 5.11 with Part A's change (zero-initialised output layer), in this order."""
        dit_init(self, self.patch_embed["proj"], self.t_embedder, self.y_embedder)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.embed_dim, self.grid, self.grid)
                                 .view_as(self.pos_embed))
        for block in self.blocks():
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_adaLN_modulation[-1], self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def blocks(self) -> list[LaMambaBlock]:
        return [m for m in self.modules() if isinstance(m, LaMambaBlock)]

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x (N, C, H, W) noisy input, t (N,) timesteps, y (N,) labels (``num_classes`` = null class)."""
        cfg = self.config
        check_input(x, t, y, self.in_channels, (cfg.input_size, cfg.input_size), self.num_classes,
                    "LaMamba-Diff")
        if y is None or self.num_classes == 0:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)                # (N, cond)
        h = self.patch_embed["proj"](x).permute(0, 2, 3, 1)                       # (N, G, G, D0)
        h = self.patch_embed["norm"](h) + self.pos_embed
        if cfg.layout == "isotropic":
            h = self.layers[0](h, c)
        else:
            skips = []
            for stage, down in zip(self.layers, self.downsamples):
                h = stage(h, c)
                skips.append(h)                                                   # before merging
                h = down(h)
            h = h + self.mid_layer(h, c)                                          # released code's outer residual
            for up, fuse, stage, skip in zip(self.upsamples, self.skip_fuse, self.layers_up, reversed(skips)):
                h = up(h)
                h = fuse(h, skip) if isinstance(fuse, ConcatSkip) else h + skip
                h = stage(h, c)
        h = self.final_up(h)                                                      # (N, G, G, D0)
        shift, scale = self.final_adaLN_modulation(self.final_condition_projection(c))[:, None, None].chunk(2, -1)
        h = self.final_linear(modulate(self.final_norm(h), shift, scale))         # (N, G, G, p*p*C_out)
        return self.unpatchify(h)

    def unpatchify(self, h: Tensor) -> Tensor:
        """(N, G, G, p*p*C) -> (N, C, G*p, G*p)."""
        p, C = self.config.patch_size, self.out_channels
        Nb, G = h.shape[0], h.shape[1]
        h = h.view(Nb, G, G, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(Nb, C, G * p, G * p)
