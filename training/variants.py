"""The StretchySnake paper's flexible-training variants (plus vanilla): which (frames, pixels,
patch) each training batch runs at. docs/design.md section 5.

The paper's sets, for a native 16 frames x 224 px / patch 16 model, are frames {8, 16, 32, 64}
and sizes {96, 128, 224, 384}; FlexiViT fixes 240 px with patches {8, ..., 48}; flex-all picks a
patch in [12, 48] dividing the size. Here they are scaled to the model's native configuration:
frames are the native count x {0.5, 1, 2, 4}; sizes and patches scale by native pixels / 224.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from model.config import VideoMambaConfig
from model.flex import static_tokens_patch

VARIANTS = ("none", "temporal", "static_patch", "static_tokens", "flexivit", "flex_all")
PAPER_SIZES = (96, 128, 224, 384)
PAPER_FRAME_RATIOS = (0.5, 1, 2, 4)  # {8, 16, 32, 64} around a native 16
FLEXIVIT_SIZE = 240
FLEXIVIT_PATCHES = (8, 10, 12, 15, 16, 20, 24, 30, 40, 48)
FLEX_ALL_PATCH_RANGE = (12, 48)


@dataclass(frozen=True)
class Config:
    frames: int
    pixels: int
    patch: int


def default_sizes(cfg: VideoMambaConfig) -> list[int]:
    return sorted({max(cfg.patch_size, round(s * cfg.img_size / 224)) for s in PAPER_SIZES})


def default_frames(cfg: VideoMambaConfig) -> list[int]:
    return sorted({max(cfg.tubelet, round(r * cfg.num_frames)) for r in PAPER_FRAME_RATIOS})


def parse_configs(text: str) -> list[Config]:
    """'8x56/28,4x56/16' (frames x pixels / patch) -> [Config(8, 56, 28), Config(4, 56, 16)]."""
    configs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            size, patch = item.split("/")
            frames, pixels = size.lower().split("x")
            configs.append(Config(int(frames), int(pixels), int(patch)))
        except ValueError:
            raise ValueError(f"bad configuration {item!r}: want FRAMESxPIXELS/PATCH, e.g. 8x56/28") from None
    return configs


def divisors_in(n: int, lo: float, hi: float) -> list[int]:
    return [p for p in range(max(1, int(lo)), int(hi) + 1) if n % p == 0 and lo <= p <= hi]


class ConfigSampler:
    """Draws the configuration of each training batch for one variant."""

    def __init__(self, variant: str, cfg: VideoMambaConfig, sizes=None, frames=None, seed: int = 0,
                 also: list[Config] | None = None, also_fraction: float = 0.0):
        if variant not in VARIANTS:
            raise ValueError(f"unknown flex variant {variant!r}; choose from {VARIANTS}")
        if not 0 <= also_fraction <= 1:
            raise ValueError(f"also_fraction must be in [0, 1], got {also_fraction}")
        if also_fraction and not also:
            raise ValueError("also_fraction > 0 needs configurations to mix in (also)")
        for c in also or []:
            if c.patch < 1 or c.patch > c.pixels or c.frames < 1:
                raise ValueError(f"cannot train at {c}: needs frames >= 1 and 1 <= patch <= pixels")
        # extra configurations a fraction of the batches trains at, whatever the variant draws
        # otherwise (e.g. the tiny token grids that a >= 90% FLOP cut needs)
        self.also, self.also_fraction = list(also or []), also_fraction
        self.variant, self.cfg = variant, cfg
        self.sizes = list(sizes) if sizes else default_sizes(cfg)
        self.frames = list(frames) if frames else default_frames(cfg)
        scale = cfg.img_size / 224
        self.flexivit_size = round(FLEXIVIT_SIZE * scale)
        # patches that divide the FlexiViT frame size, over the paper's range scaled to this model
        lo, hi = min(FLEXIVIT_PATCHES) * scale, max(FLEXIVIT_PATCHES) * scale
        self.flexivit_patches = divisors_in(self.flexivit_size, lo, hi) or [cfg.patch_size]
        self.rng = random.Random(seed)

    def native(self) -> Config:
        return Config(self.cfg.num_frames, self.cfg.img_size, self.cfg.patch_size)

    def sample(self) -> Config:
        cfg, rng, v = self.cfg, self.rng, self.variant
        if self.also_fraction and rng.random() < self.also_fraction:
            return rng.choice(self.also)
        if v == "none":
            return self.native()
        frames = rng.choice(self.frames)
        if v == "temporal":
            return Config(frames, cfg.img_size, cfg.patch_size)
        if v == "flexivit":
            return Config(frames, self.flexivit_size, rng.choice(self.flexivit_patches))
        pixels = rng.choice(self.sizes)
        if v == "static_patch":
            return Config(frames, pixels, cfg.patch_size)
        if v == "static_tokens":
            return Config(frames, pixels, static_tokens_patch(pixels, cfg.grid_size))
        # flex_all: a patch dividing the size, in the paper's [12, 48] scaled to this model
        scale = cfg.img_size / 224
        lo, hi = FLEX_ALL_PATCH_RANGE[0] * scale, FLEX_ALL_PATCH_RANGE[1] * scale
        patches = divisors_in(pixels, lo, hi) or [min(max(round(lo), 1), pixels)]
        return Config(frames, pixels, rng.choice(patches))
