"""Frames -> network input in one Triton pass on the GPU: short-side resize (bilinear, antialiased
when shrinking, exactly the filter of torch's `F.interpolate(mode="bilinear", antialias=True,
align_corners=False)` that video.transforms uses on the CPU), centre crop, /255, mean/std
normalisation, (3, T, pixels, pixels) layout and output dtype.

Kernel `_preprocess_kernel`, grid (T, cdiv(pixels, BLOCK_H), cdiv(pixels, BLOCK_W)): a program
makes a BLOCK_H x BLOCK_W tile of the crop of one frame, all three channels, reading the uint8
(T, H, W, 3) frames directly (any strides). Only the crop is computed: the resized frame is
never materialised. The filter is separable: for every source row in an output row's window
the horizontal taps are summed first, then weighted by the vertical tap, the same order of
sums as torch's two-pass CPU kernel; weights are the triangle (1 - |x|) with its support widened
by the downscale factor and normalised to sum to one, computed in the kernel.

video.transforms.preprocess calls this for CUDA tensors; under TRITON_INTERPRET=1 (set before
triton is imported) it also runs on CPU tensors, which is how the tests compare the two.
Agreement with the CPU path: 1e-4 absolute for float32 output (values are O(1)), the rounding
of the output dtype otherwise.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .transforms import IMAGENET_MEAN, IMAGENET_STD, short_side_size

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_H, BLOCK_W = 16, 32


@triton.jit
def _window(o, scale, support, inv, in_size):
    """First source index and tap count of output index o (as torch's antialiased kernels)."""
    center = scale * (o.to(tl.float32) + 0.5)
    lo = tl.maximum((center - support + 0.5).to(tl.int32), 0)
    hi = tl.minimum((center + support + 0.5).to(tl.int32), in_size)
    return center, lo, hi - lo


@triton.jit
def _tap(k, center, lo, count, inv):
    w = tl.maximum(1.0 - tl.abs((k + lo - center + 0.5) * inv), 0.0)
    return tl.where(k < count, w, 0.0)


@triton.jit
def _preprocess_kernel(src_ptr, s_t, s_h, s_w, s_c, out_ptr, T, H, W, P, top, left,
                       scale_y, support_y, inv_y, scale_x, support_x, inv_x, taps_y, taps_x,
                       mul0, mul1, mul2, sub0, sub1, sub2,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_r = rows < P
    mask_c = cols < P
    cy, lo_y, n_y = _window(rows + top, scale_y, support_y, inv_y, H)
    cx, lo_x, n_x = _window(cols + left, scale_x, support_x, inv_x, W)
    sum_y = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for k in range(0, taps_y):
        sum_y += _tap(k, cy, lo_y, n_y, inv_y)
    sum_x = tl.zeros((BLOCK_W,), dtype=tl.float32)
    for k in range(0, taps_x):
        sum_x += _tap(k, cx, lo_x, n_x, inv_x)
    sum_y = tl.where(sum_y == 0.0, 1.0, sum_y)
    sum_x = tl.where(sum_x == 0.0, 1.0, sum_x)
    acc0 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    frame = src_ptr + t * s_t
    for ky in range(0, taps_y):
        wy = _tap(ky, cy, lo_y, n_y, inv_y) / sum_y
        y_ok = (ky < n_y) & mask_r
        row_ptr = frame + (lo_y + ky).to(tl.int64)[:, None] * s_h
        r0 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
        r1 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
        r2 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
        for kx in range(0, taps_x):
            wx = (_tap(kx, cx, lo_x, n_x, inv_x) / sum_x)[None, :]
            x_ok = (kx < n_x) & mask_c
            ptr = row_ptr + (lo_x + kx).to(tl.int64)[None, :] * s_w
            ok = y_ok[:, None] & x_ok[None, :]
            r0 += wx * tl.load(ptr, mask=ok, other=0).to(tl.float32)
            r1 += wx * tl.load(ptr + s_c, mask=ok, other=0).to(tl.float32)
            r2 += wx * tl.load(ptr + 2 * s_c, mask=ok, other=0).to(tl.float32)
        acc0 += wy[:, None] * r0
        acc1 += wy[:, None] * r1
        acc2 += wy[:, None] * r2
    plane = P * P
    out = out_ptr + (t * P + rows[:, None]) * P + cols[None, :]
    ok = mask_r[:, None] & mask_c[None, :]
    dtype = out_ptr.dtype.element_ty
    tl.store(out, (acc0 * mul0 - sub0).to(dtype), mask=ok)
    tl.store(out + T * plane, (acc1 * mul1 - sub1).to(dtype), mask=ok)
    tl.store(out + 2 * T * plane, (acc2 * mul2 - sub2).to(dtype), mask=ok)


def _axis(in_size: int, out_size: int) -> tuple[float, float, float, int]:
    """(scale, support, 1/filter scale, max taps) of one axis, as torch's antialiased bilinear."""
    scale = float(torch.tensor(in_size, dtype=torch.float32) / out_size)  # torch computes it in fp32
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    return scale, support, inv, int(math.ceil(2 * support)) + 2


def preprocess_triton(frames: torch.Tensor, pixels: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, H, W, 3) frames (uint8, or any real dtype in 0..255) on the GPU -> (3, T, pixels,
    pixels) in `dtype`: the same result as video.transforms.preprocess (short side to `pixels`,
    centre crop, (x/255 - mean)/std) in one kernel."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    if frames.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("preprocess_triton needs a CUDA tensor (or TRITON_INTERPRET=1 set before triton is imported)")
    t, height, width, _ = frames.shape
    if min(height, width) == pixels:
        new_w, new_h = width, height  # no resize, as the CPU path
    else:
        new_w, new_h = short_side_size(width, height, pixels)
    if new_h < pixels or new_w < pixels:
        raise ValueError(f"cannot crop {pixels}x{pixels} from {new_w}x{new_h} frames")
    top, left = (new_h - pixels) // 2, (new_w - pixels) // 2
    sy, supy, invy, taps_y = _axis(height, new_h)
    sx, supx, invx, taps_x = _axis(width, new_w)
    out = torch.empty(3, t, pixels, pixels, device=frames.device, dtype=dtype)
    # the CPU path's constants: x * (1 / (255 std)) - mean / std, each rounded to fp32
    mul = [1.0 / (255.0 * s) for s in std]
    sub = [m / s for m, s in zip(mean, std)]
    grid = (t, triton.cdiv(pixels, BLOCK_H), triton.cdiv(pixels, BLOCK_W))
    _preprocess_kernel[grid](frames, *frames.stride(), out, t, height, width, pixels, top, left,
                             sy, supy, invy, sx, supx, invx, taps_y, taps_x, *mul, *sub,
                             BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W)
    return out
