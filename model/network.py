"""The flexible VideoMamba network: one set of weights, any frames, frame size and patch size.

Parameter names and the forward are exactly the public VideoMamba (OpenGVLab) video model, so
its checkpoints load as they are (docs/design.md section 4):

    tokens = [cls, frame0 patches (row-major), frame1 ...]; cls + pos_embed[0]; patch tokens +
    spatial pos_embed[1:] + temporal_pos_embedding[t]
    r_{i+1} = r_i + mixer_i(RMSNorm_i(r_i))      (residual in fp32)
    logits = head(RMSNorm_f(r)[:, 0])

The flexed weights (patch kernel, positional embeddings) for a configuration are computed from
the stored ones by model.flex: cached per configuration in eval mode, recomputed (and so
differentiable) in training mode.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import flex
from .config import VideoMambaConfig
from .scan.bimamba import Direction, bimamba_inner


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(self.weight.dtype)


class PatchEmbed(nn.Module):
    """Holds the stored Conv3d kernel (C, 3, tubelet, p, p); the forward takes a flexed kernel."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        k, p = cfg.tubelet, cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=(k, p, p), stride=(k, p, p))

    def forward(self, video: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T'*H'*W', C). A strided conv with kernel == stride is a GEMM over
        non-overlapping patches; the remainder of T, H, W past the last whole patch is dropped."""
        c, _, k, p, _ = kernel.shape
        b, ch, t, h, w = video.shape
        gt, gh, gw = t // k, h // p, w // p
        x = video[:, :, : gt * k, : gh * p, : gw * p].reshape(b, ch, gt, k, gh, p, gw, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, gt * gh * gw, ch * k * p * p)
        return F.linear(x, kernel.reshape(c, -1), self.proj.bias)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class BiMambaMixer(nn.Module):
    """Mamba with two directions (VideoMamba / Vim "v2"): the backward direction runs the same
    computation with its own weights on the tokens in backward order; outputs are summed
    (model.scan.bimamba, which picks the kernels)."""

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        c, e, r, n, k = cfg.embed_dim, cfg.d_inner, cfg.dt_rank, cfg.d_state, cfg.d_conv
        self.d_inner, self.dt_rank, self.d_state, self.d_conv = e, r, n, k
        self.in_proj = nn.Linear(c, 2 * e, bias=False)
        a_init = torch.log(torch.arange(1, n + 1).float()).repeat(e, 1)
        # the public checkpoints' names: conv1d, x_proj, dt_proj, A_log, D and their "_b" twins
        self.conv1d = nn.Conv1d(e, e, k, groups=e, padding=k - 1, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(a_init.clone())
        self.D = nn.Parameter(torch.ones(e))
        self.conv1d_b = nn.Conv1d(e, e, k, groups=e, padding=k - 1, bias=True)
        self.x_proj_b = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj_b = nn.Linear(r, e, bias=True)
        self.A_b_log = nn.Parameter(a_init.clone())
        self.D_b = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, c, bias=False)

    def directions(self) -> tuple[Direction, Direction]:
        """(forward, backward) weights for the op."""
        return (Direction(self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                          self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D),
                Direction(self.conv1d_b.weight, self.conv1d_b.bias, self.x_proj_b.weight,
                          self.dt_proj_b.weight, self.dt_proj_b.bias, self.A_b_log, self.D_b))

    def forward(self, hidden: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, C); order: token indices of the backward scan."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        return self.out_proj(bimamba_inner(x, z, order, *self.directions()))


class Block(nn.Module):
    def __init__(self, cfg: VideoMambaConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mixer = BiMambaMixer(cfg)
        self.drop_path = drop_path

    def forward(self, residual: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        out = self.mixer(self.norm(residual), order)
        return residual + _drop_path(out, self.drop_path, self.training).float()


@functools.lru_cache(maxsize=128)
def backward_order(kind: str, grid: tuple[int, int, int]) -> torch.Tensor:
    """Token order of the backward direction for a [cls, frames...] sequence: the whole sequence
    reversed (the public model), or patches reversed within each frame, or frames reversed;
    the last two keep cls last too, like the full reversal."""
    with torch.inference_mode(False):  # cached: an inference tensor here would break later training
        return _backward_order(kind, grid)


def _backward_order(kind: str, grid: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = grid
    if kind == "reverse":
        return torch.arange(t * h * w, -1, -1)
    patches = torch.arange(1, 1 + t * h * w).reshape(t, h * w)
    patches = patches.flip(1) if kind == "reverse_within_frame" else patches.flip(0)
    return torch.cat([patches.reshape(-1), torch.zeros(1, dtype=torch.long)])


class VideoMamba(nn.Module):
    def __init__(self, config: VideoMambaConfig):
        super().__init__()
        self.config = cfg = config
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        spatial = cfg.grid_size ** 2
        if cfg.pos_embed == "separable":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spatial, c))
            self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, cfg.temporal_size, c))
        else:  # joint: one row per (t, h, w) token after the cls row
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.temporal_size * spatial, c))
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.layers = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm_f = RMSNorm(c, eps=cfg.norm_eps)
        self.head = nn.Linear(c, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._flex_cache: dict = {}
        self.flex_computations = 0  # how many times flexed weights were computed (cache misses)
        self.reset_parameters()

    # ----------------------------------------------------------------------------- init
    def reset_parameters(self, seed: int | None = None):
        """VideoMamba's init for the embeddings and the head (truncated normal, std 0.02); the
        mixers keep Mamba's own init: its default Linear init (uniform +-1/sqrt(fan_in)) and SSM
        init for dt_proj and A, which the public code overwrites with std 0.02 by accident of
        ordering. With std 0.02 a fresh nano's cls feature varies by 0.3% between videos, with
        Mamba's scale by 2.6%, and benchmarks/learnability.py's toy motion task then starts to
        learn within 200 steps (training on the synthetic benchmark still stays at chance)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        cfg = self.config

        def trunc(t, std=0.02):
            with torch.no_grad():
                t.copy_(torch.randn(t.shape, generator=gen).clamp_(-2, 2) * std)

        trunc(self.pos_embed)
        spatial = cfg.grid_size ** 2
        if cfg.pos_init == "sincos":
            with torch.no_grad():
                table = sincos_spatial(cfg.grid_size, cfg.embed_dim)
                frames = sincos_1d(torch.arange(cfg.temporal_size, dtype=torch.float64), cfg.embed_dim)
                if cfg.pos_embed == "separable":
                    self.pos_embed[0, 1:] = table
                    self.temporal_pos_embedding.copy_(frames[None])
                else:
                    self.pos_embed[0, 1:] = (frames[:, None, :] + table[None]).flatten(0, 1)
        elif cfg.pos_embed == "joint":  # KAIST "temporal expanding": the spatial table repeated over time
            with torch.no_grad():
                self.pos_embed[:, 1:] = self.pos_embed[:, 1: 1 + spatial].repeat(1, cfg.temporal_size, 1)
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear) or ".dt_proj" in name:
                continue
            if ".mixer." in name:
                bound = module.in_features ** -0.5
                with torch.no_grad():
                    module.weight.copy_((torch.rand(module.weight.shape, generator=gen) * 2 - 1) * bound)
            else:
                trunc(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer in self.layers:
                mixer = layer.mixer
                mixer.out_proj.weight.div_(math.sqrt(cfg.depth))  # GPT-2 style residual scaling
                for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
                    bound = cfg.dt_rank ** -0.5
                    dt_proj.weight.copy_((torch.rand(dt_proj.weight.shape, generator=gen) * 2 - 1) * bound)
                    dt = torch.exp(torch.rand(cfg.d_inner, generator=gen) * (math.log(0.1) - math.log(1e-3))
                                   + math.log(1e-3)).clamp(min=1e-4)
                    dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self._flex_cache.clear()

    # ----------------------------------------------------------------------------- flexing
    def _flexed(self, patch: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch kernel, additive positions (1, 1 + T'H'W', C) with the cls row first)."""
        params = (self.patch_embed.proj.weight, self.pos_embed, self.cls_token,
                  getattr(self, "temporal_pos_embedding", self.pos_embed))
        key = None
        if not self.training:
            # parameter versions change on every in-place update (optimizer steps, load_state_dict)
            key = (patch, grid, params[0].dtype, params[0].device, tuple((p._version, p.data_ptr()) for p in params))
            hit = self._flex_cache.get(key)
            if hit is not None:
                return hit
        self.flex_computations += 1
        cfg = self.config
        kernel = flex.resize_patch_kernel(self.patch_embed.proj.weight, patch, cfg.patch_resize)
        native_spatial = (cfg.grid_size, cfg.grid_size)
        if cfg.pos_embed == "separable":
            spatial = flex.resample_spatial_pos_embed(self.pos_embed[:, 1:], native_spatial, grid[1:])
            temporal = flex.resample_temporal_pos_embed(self.temporal_pos_embedding, grid[0])
            tokens = (temporal[:, :, None, :] + spatial[:, None, :, :]).flatten(1, 2)
        else:
            tokens = flex.resample_joint_pos_embed(self.pos_embed[:, 1:], (cfg.temporal_size, *native_spatial), grid)
        positions = torch.cat([self.pos_embed[:, :1] + self.cls_token, tokens], dim=1)
        if key is not None:
            if len(self._flex_cache) >= 64:  # a server sees a bounded set; stay bounded anyway
                self._flex_cache.pop(next(iter(self._flex_cache)))
            self._flex_cache[key] = (kernel.detach(), positions.detach())
            return self._flex_cache[key]
        return kernel, positions

    def token_grid(self, video_shape, patch: int) -> tuple[int, int, int]:
        _, _, t, h, w = video_shape
        return flex.token_grid(t, (h, w), patch, self.config.tubelet)

    def _check_input(self, video: torch.Tensor, patch: int):
        cfg = self.config
        if video.dim() != 5 or video.shape[1] != cfg.in_chans:
            raise ValueError(f"video must be (B, {cfg.in_chans}, T, H, W), got {tuple(video.shape)}")
        if not isinstance(patch, int) or patch < 1:
            raise ValueError(f"patch must be a positive int, got {patch!r}")
        _, _, t, h, w = video.shape
        if t < cfg.tubelet:
            raise ValueError(f"need at least {cfg.tubelet} frames (the tubelet), got {t}")
        if min(h, w) < patch:
            raise ValueError(f"frames of {h}x{w} px are smaller than one {patch}x{patch} patch")

    # ----------------------------------------------------------------------------- forward
    def features(self, video: torch.Tensor, patch: int | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) normalised video -> (B, C) features after the final norm: the cls
        token's, or the patch tokens' mean (config.pool)."""
        patch = self.config.patch_size if patch is None else patch
        self._check_input(video, patch)
        grid = self.token_grid(video.shape, patch)
        kernel, positions = self._flexed(patch, grid)
        x = self.patch_embed(video.to(kernel.dtype), kernel)
        x = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x], dim=1) + positions
        if self.config.scan_order == "temporal_first":  # (t, h, w) -> (h, w, t) after the cls token
            x = torch.cat([x[:, :1], x[:, 1:].unflatten(1, (grid[0], -1)).transpose(1, 2).flatten(1, 2)], dim=1)
        order = backward_order(self.config.backward_order, grid)
        residual = x.float()
        for layer in self.layers:
            residual = layer(residual, order)
        if self.config.pool == "mean":
            return self.norm_f(residual[:, 1:]).mean(dim=1)
        return self.norm_f(residual[:, 0])

    def forward(self, video: torch.Tensor, patch: int | None = None) -> torch.Tensor:
        return self.head(self.features(video, patch))


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(n,) positions -> (n, dim) float32 table: [sin | cos] at frequencies 1/10000^(2i/dim), unit
    amplitude (the Transformer's table)."""
    half = dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.double()[:, None] * freqs[None]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half)).float()


def sincos_spatial(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) row-major table: half the channels encode the row, half the column."""
    rows = torch.arange(grid, dtype=torch.float64).repeat_interleave(grid)
    cols = torch.arange(grid, dtype=torch.float64).repeat(grid)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim - dim // 2)], dim=1)


def build_model(preset="tiny", **overrides) -> VideoMamba:
    """build_model("tiny", num_classes=400); a VideoMambaConfig is accepted too."""
    from .config import get_config
    return VideoMamba(get_config(preset, **overrides))
