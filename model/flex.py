"""Flexing: small pure, differentiable resampling functions for the patch kernel and the
positional embeddings (in the spirit of timm's resample_patch_embed / resample_abs_pos_embed).

All of them return their input unchanged when the size does not change, and are linear in the
weights, so gradients reach the stored parameters during flexible training.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=256)
def _linear_resize_matrix(old: int, new: int) -> torch.Tensor:
    """R (new x old), float64: the 1-D factor of torch's bilinear resize (align_corners=False,
    antialiased when shrinking). Bilinear 2-D resize of a p x p patch x is R @ x @ R.T."""
    # One-hot rows resized along the last axis, two rows high: torch's antialiased resize of an
    # (old x 1) column image returns wrong values (torch 2.13: every output equals the first),
    # which made every shrunken kernel see only the first pixels of its patch.
    basis = torch.eye(old, dtype=torch.float64).reshape(old, 1, 1, old).expand(old, 1, 2, old)
    out = F.interpolate(basis, size=(2, new), mode="bilinear", align_corners=False,
                        antialias=new < old)
    return out[:, 0, 0, :].T.contiguous()


@functools.lru_cache(maxsize=256)
def pi_resize_matrix(old: int, new: int) -> torch.Tensor:
    """P (new x old), float64, such that w* = P @ w @ P.T is FlexiViT's pseudo-inverse resize of a
    kernel w: <resize(x), w*> = <x, w> for every patch x when upsampling (exact), least squares
    when downsampling. The 2-D operator is a Kronecker product, so its pinv factors per axis."""
    return torch.linalg.pinv(_linear_resize_matrix(old, new).T)


def resize_patch_kernel(weight: torch.Tensor, patch: int, mode: str = "pinv") -> torch.Tensor:
    """Resize a patch-embedding kernel (..., p, p) to (..., patch, patch).

    mode "pinv": FlexiViT's PI-resize (keeps token values when the input is resized with the
    patch). mode "bicubic": plain bicubic interpolation of the kernel, as the StretchySnake paper
    describes (token norms then scale with the patch area)."""
    old_h, old_w = weight.shape[-2:]
    if (old_h, old_w) == (patch, patch):
        return weight
    if mode == "pinv":
        ph = pi_resize_matrix(old_h, patch).to(weight)
        pw = ph if old_w == old_h else pi_resize_matrix(old_w, patch).to(weight)
        return ph @ weight @ pw.T
    if mode == "bicubic":
        lead = weight.shape[:-2]
        flat = weight.reshape(-1, 1, old_h, old_w)
        out = F.interpolate(flat, size=(patch, patch), mode="bicubic", align_corners=False, antialias=patch < old_h)
        return out.reshape(*lead, patch, patch)
    raise ValueError(f"unknown patch resize mode {mode!r}; choose 'pinv' or 'bicubic'")


def resample_spatial_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(..., gh*gw, C) grid tokens -> (..., gh'*gw', C) by 2-D bicubic, align_corners=False, no
    antialias (as the public VideoMamba loader)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    lead, channels = pos.shape[:-2], pos.shape[-1]
    grid = pos.reshape(-1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(*lead, new_grid[0] * new_grid[1], channels)


def resample_temporal_pos_embed(pos: torch.Tensor, new_len: int) -> torch.Tensor:
    """(..., T, C) -> (..., T', C) by 1-D linear interpolation, align_corners=False."""
    if pos.shape[-2] == new_len:
        return pos
    lead, old_len, channels = pos.shape[:-2], pos.shape[-2], pos.shape[-1]
    seq = pos.reshape(-1, old_len, channels).transpose(1, 2)
    seq = F.interpolate(seq, size=new_len, mode="linear", align_corners=False)
    return seq.transpose(1, 2).reshape(*lead, new_len, channels)


def resample_joint_pos_embed(pos: torch.Tensor, old: tuple[int, int, int], new: tuple[int, int, int]) -> torch.Tensor:
    """(1, t*gh*gw, C) joint spatio-temporal embedding: bicubic over space, linear over time."""
    if tuple(old) == tuple(new):
        return pos
    t, gh, gw = old
    channels = pos.shape[-1]
    per_frame = resample_spatial_pos_embed(pos.reshape(t, gh * gw, channels), (gh, gw), new[1:])
    spatial = per_frame.shape[1]
    over_time = resample_temporal_pos_embed(per_frame.transpose(0, 1), new[0])  # (P', t', C)
    return over_time.transpose(0, 1).reshape(1, new[0] * spatial, channels)


def static_tokens_patch(pixels: int, grid: int) -> int:
    """The patch size that keeps the native token grid at this frame size (static tokens):
    224 px -> 16 for a 14x14 grid, 128 px -> 9 (floor(128 / 9) = 14). Where no patch gives the
    grid exactly (96 px: 6 -> 16x16, 7 -> 13x13) the floor keeps at least the native grid."""
    return max(1, pixels // grid)


def token_grid(frames: int, pixels: int | tuple[int, int], patch: int, tubelet: int = 1) -> tuple[int, int, int]:
    """(T', H', W') token grid of a (frames, pixels, patch) configuration (floor, like a strided conv)."""
    h, w = (pixels, pixels) if isinstance(pixels, int) else pixels
    return frames // tubelet, h // patch, w // patch


def num_tokens(frames: int, pixels: int | tuple[int, int], patch: int, tubelet: int = 1) -> int:
    """Sequence length including the cls token."""
    return 1 + math.prod(token_grid(frames, pixels, patch, tubelet))
