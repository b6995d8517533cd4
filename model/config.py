"""Model configuration and the registry of named presets (timm-style: presets by name)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

POS_EMBEDS = ("separable", "joint")
# How the backward direction orders the tokens (KAIST VideoMamba's three choices).
BACKWARD_ORDERS = ("reverse", "reverse_within_frame", "reverse_frames")
PATCH_RESIZES = ("pinv", "bicubic")
# The forward scan's token order (VideoMamba's paper compares both): frame by frame (the public
# models), or position by position with a patch's frames adjacent, so that the mixer's causal
# conv sees each patch's recent past like a temporal convolution.
SCAN_ORDERS = ("spatial_first", "temporal_first")
# How a fresh model's positional embeddings start: VideoMamba's truncated normal (std 0.02), or
# fixed-frequency sin-cos tables at unit scale, which a from-scratch model binds to content sooner.
POS_INITS = ("trunc_normal", "sincos")
# What the head reads: the cls token (VideoMamba), or the mean of the patch tokens after the final
# norm. With cls first in the sequence only the backward scan reaches it, and a fresh model's
# decaying state shows it mostly the first frame; the mean sees every token from the first step.
POOLS = ("cls", "mean")


@dataclass(frozen=True)
class VideoMambaConfig:
    """Everything needed to build the network; the native (frames, pixels, patch) is where the
    stored positional embeddings and patch kernel live, any other configuration is flexed from it."""

    embed_dim: int = 192
    depth: int = 24
    num_classes: int = 400
    patch_size: int = 16  # native patch (kernel size of the stored patch embedding)
    img_size: int = 224  # native pixels: the stored spatial grid is img_size // patch_size squared
    num_frames: int = 8  # native frames: the stored temporal embedding has num_frames // tubelet rows
    tubelet: int = 1  # frames per token (KAIST uses 2)
    in_chans: int = 3
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means ceil(embed_dim / 16), as mamba's "auto"
    pos_embed: str = "separable"  # spatial + temporal (public checkpoints) or joint spatio-temporal
    backward_order: str = "reverse"
    scan_order: str = "spatial_first"
    patch_resize: str = "pinv"  # FlexiViT pseudo-inverse resize, or plain bicubic
    pos_init: str = "trunc_normal"  # only affects a fresh init; loaded weights overwrite it
    pool: str = "cls"
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.embed_dim / 16))
        problems = []
        if self.pos_embed not in POS_EMBEDS:
            problems.append(f"pos_embed={self.pos_embed!r} (choose from {POS_EMBEDS})")
        if self.backward_order not in BACKWARD_ORDERS:
            problems.append(f"backward_order={self.backward_order!r} (choose from {BACKWARD_ORDERS})")
        if self.pos_init not in POS_INITS:
            problems.append(f"pos_init={self.pos_init!r} (choose from {POS_INITS})")
        if self.pool not in POOLS:
            problems.append(f"pool={self.pool!r} (choose from {POOLS})")
        if self.scan_order not in SCAN_ORDERS:
            problems.append(f"scan_order={self.scan_order!r} (choose from {SCAN_ORDERS})")
        elif self.scan_order == "temporal_first" and self.backward_order != "reverse":
            problems.append(f"backward_order={self.backward_order!r} is defined for spatial_first scans only")
        if self.patch_resize not in PATCH_RESIZES:
            problems.append(f"patch_resize={self.patch_resize!r} (choose from {PATCH_RESIZES})")
        if self.tubelet < 1 or self.num_frames < self.tubelet:
            problems.append(f"tubelet={self.tubelet}, num_frames={self.num_frames} (need 1 <= tubelet <= num_frames)")
        if self.img_size < self.patch_size or self.patch_size < 1:
            problems.append(f"img_size={self.img_size}, patch_size={self.patch_size}")
        for name in ("embed_dim", "depth", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if problems:
            raise ValueError("invalid VideoMambaConfig: " + "; ".join(problems))

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def grid_size(self) -> int:
        """Native spatial token grid side."""
        return self.img_size // self.patch_size

    @property
    def temporal_size(self) -> int:
        """Native number of temporal tokens."""
        return self.num_frames // self.tubelet

    def replace(self, **changes) -> "VideoMambaConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VideoMambaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**data)


PRESETS: dict[str, VideoMambaConfig] = {
    # Public VideoMamba sizes (OpenGVLab): 7.0M / 25.6M / 73.9M parameters at 400 classes.
    "tiny": VideoMambaConfig(embed_dim=192, depth=24),
    "small": VideoMambaConfig(embed_dim=384, depth=24),
    "middle": VideoMambaConfig(embed_dim=576, depth=32),
    # For CPU demos and training on 2 cores: 7x7 tokens per frame at 112 px, 8 frames (393 tokens).
    "nano": VideoMambaConfig(embed_dim=96, depth=8, img_size=112, num_frames=8),
}


def get_config(preset: str | VideoMambaConfig, **overrides) -> VideoMambaConfig:
    if isinstance(preset, VideoMambaConfig):
        base = preset
    else:
        try:
            base = PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base
