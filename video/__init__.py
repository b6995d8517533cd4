"""Video decoding shared by training and serving: probe, sample, sparse decode, preprocess.

    info = probe(source)                                  # metadata only, limits checked
    times = sample_times(info, 16, mode="test")           # segment middles (or random in train)
    frames = decode_frames(source, 16, short_side=224)    # (T, H, W, 3) uint8 RGB, sparse
    clip = load_clip(source, frames=16, pixels=224)       # (3, T, 224, 224) float32, normalised

A source is a path, bytes-like, or a binary file object. Bad inputs raise the typed errors of
`video.errors`, all subclasses of `VideoError`. This package imports nothing else of the repo,
and torch only where it is needed (preprocess, load_clip). `video.isolation.DecodePool` runs
probe and decode in child processes with hard time and memory bounds (the server's default).
"""
from .decode import DECODE_MODES, DecodeStats, decode_frames, load_clip
from .errors import (CorruptVideo, DecodeMemoryExceeded, DecodeTimeout, FrameTooLarge,
                     LimitExceeded, NotAVideo, NoVideoStream, TooLarge, TooLong, UnsupportedCodec,
                     VideoError)
from .limits import Limits
from .probe import VideoInfo, probe
from .sampling import frame_indices, sample_times
from .transforms import IMAGENET_MEAN, IMAGENET_STD, preprocess

__all__ = [
    "probe", "decode_frames", "load_clip", "preprocess", "sample_times", "frame_indices", "VideoInfo", "Limits",
    "DecodeStats", "DECODE_MODES", "IMAGENET_MEAN", "IMAGENET_STD",
    "VideoError", "NotAVideo", "NoVideoStream", "UnsupportedCodec", "CorruptVideo",
    "LimitExceeded", "TooLarge", "TooLong", "FrameTooLarge", "DecodeTimeout",
    "DecodeMemoryExceeded",
]
