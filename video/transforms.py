"""Frames -> network input, in torch: short-side resize, centre crop, ImageNet normalisation.

This is the VideoMamba test-time pipeline: short side resized to the input size, a centre
`pixels x pixels` crop, `/255`, then mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

torch is imported inside the functions that use it, so that `import video` stays light: the
isolated decoding processes (video.isolation) decode with PyAV and numpy only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is `short_side`, aspect ratio kept; the
    longer side is rounded to the nearest integer (so it is never below `short_side`)."""
    if short_side < 1:
        raise ValueError(f"short_side must be positive, not {short_side}")
    if width <= height:
        return short_side, max(short_side, round(height * short_side / width))
    return max(short_side, round(width * short_side / height)), short_side


def resize_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """(T, C, H, W) float -> short side `short_side`; bilinear, antialiased when shrinking."""
    import torch.nn.functional as F

    height, width = frames.shape[-2:]
    new_w, new_h = short_side_size(width, height, short_side)
    if (new_h, new_w) == (height, width):
        return frames
    return F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False,
                         antialias=True)


def center_crop(frames: torch.Tensor, pixels: int) -> torch.Tensor:
    """Central `pixels x pixels` window of (..., H, W); H and W must be at least `pixels`."""
    height, width = frames.shape[-2:]
    if height < pixels or width < pixels:
        raise ValueError(f"cannot crop {pixels}x{pixels} from {width}x{height} frames")
    top, left = (height - pixels) // 2, (width - pixels) // 2
    return frames[..., top:top + pixels, left:left + pixels]


def preprocess(frames, pixels: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB frames (numpy or torch) -> (3, T, pixels, pixels) float32.

    Resizes the short side to `pixels` if it is not already (bilinear, antialiased), crops the
    centre, scales to [0, 1] and normalises with `mean`/`std` (ImageNet by default). CUDA
    tensors take one fused Triton pass (video.gpu_preprocess), equal within float rounding."""
    import torch

    if isinstance(frames, torch.Tensor) and frames.is_cuda:
        from .gpu_preprocess import preprocess_triton
        return preprocess_triton(frames, pixels, mean, std)
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) \
        else torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(video.shape)}")
    video = video.permute(0, 3, 1, 2)  # (T, 3, H, W)
    if min(video.shape[-2:]) != pixels:
        video = resize_short_side(video.float(), pixels)
    video = center_crop(video, pixels).float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    video = video * scale - shift  # (x / 255 - mean) / std
    return video.permute(1, 0, 2, 3).contiguous()  # (3, T, pixels, pixels)
