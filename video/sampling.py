"""Which moments of a video to look at: segment-based uniform sampling (TSN, VideoMamba).

[0, duration) is split into `num_frames` equal segments and one time is taken in each: the
middle at test time, a uniformly random point at training time. The frame shown at each time
is decoded (`decode_frames`), so for a constant-rate video of N frames the test-mode frames are
the segment middles floor((i + 0.5) * N / T), the frame indices VideoMamba's test loader uses.
"""
from __future__ import annotations

import random
from typing import Union

import numpy as np

Rng = Union[np.random.Generator, random.Random, int, None]

MODES = ("test", "train")


def sample_times(info, num_frames: int, mode: str = "test", rng: Rng = None) -> np.ndarray:
    """`num_frames` times in seconds from the first frame, ascending.

    `info`: a `VideoInfo` (its `duration_s`) or a duration in seconds. `mode`: "test" (segment
    middles, deterministic) or "train" (a uniform point in each segment). `rng`: a numpy
    Generator, a random.Random or an int seed; the same seed gives the same times. None draws a
    fresh numpy Generator."""
    duration = info if isinstance(info, (int, float)) else info.duration_s
    if duration is None:
        raise ValueError("the video's duration is unknown; decode_frames handles such videos")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, not {num_frames}")
    if duration < 0:
        raise ValueError(f"duration must be >= 0, not {duration}")
    if mode == "test":
        offsets = np.full(num_frames, 0.5)
    elif mode == "train":
        offsets = _uniform(rng, num_frames)
    else:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    segment = float(duration) / num_frames
    return (np.arange(num_frames) + offsets) * segment


def frame_indices(fractions, count: int) -> np.ndarray:
    """Which of `count` equally long frames each time lands on; times as fractions of the
    duration, e.g. sample_times(1.0, ...)."""
    return np.minimum((np.asarray(fractions) * count).astype(int), count - 1)


def _uniform(rng: Rng, n: int) -> np.ndarray:
    """n draws in [0, 1) from any of the accepted generators."""
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng.random(n)
    if isinstance(rng, random.Random):
        return np.array([rng.random() for _ in range(n)])
    raise TypeError(f"rng must be a numpy Generator, random.Random, an int seed or None, "
                    f"not {type(rng).__name__}")
