"""What decoding a video costs: the small model the server uses to predict decode time from a
video's metadata (`DecodeModel`, stored under a profile table's "decode_model" key), and the
measurements it is fitted to (test videos written with PyAV, timed through `video.decode_frames`).
`python -m serving.profile` runs the measurement; the server only calls `predict_ms`."""
from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from video import DecodeStats, VideoInfo, decode_frames, probe
from video.camera import encode_rgb
from video.transforms import short_side_size


# ----------------------------------------------------------------------------- decode cost model
META_KEYS = ("codec", "width", "height", "coded_width", "coded_height", "fps", "num_frames",
             "duration_s", "size_bytes", "keyframes", "keyframe_interval_s",
             "keyframe_max_gap_s", "keyframe_bytes")
DECODE_KIND = "linear-decode-v1"
# Terms of decode_workload with one coefficient each; decoded_mpx has one per codec.
TERMS = ("decoded_frames", "decoded_mbytes", "keyframe_mbytes", "seeks", "output_frames",
         "converted_mpx")
# Tables fitted before keyframe_mbytes had its own coefficient: one per byte for both modes.
_SAME_AS = {"keyframe_mbytes": "decoded_mbytes"}
SEEK_EXTRA_FRAMES = 2  # frames decoded past the average half GOP per seek (measured: 1.5-2.5)
# A keyframe's share of the bytes of its GOP, where the index does not give keyframe sizes
# (Matroska): the share measured on phone-like H.264 (benchmarks/decode_modes.py: 30%); real
# phone footage puts less in its keyframes, so this errs towards predicting too slow.
KEYFRAME_SHARE = 0.3


def video_meta(info: VideoInfo) -> dict:
    """The fields of a probe result the decode model reads (what a sample stores)."""
    return {k: getattr(info, k) for k in META_KEYS}


def keyframe_mode_applies(meta: Mapping, frames: int) -> bool:
    """Does every one of the `frames` sampling segments hold a keyframe (the container's index
    lists them, and no two are further apart than a segment)? Only then is decode_mode
    "keyframe" a mode of its own: elsewhere it decodes exactly, segment by segment."""
    gap, duration = meta.get("keyframe_max_gap_s"), meta.get("duration_s")
    if not meta.get("keyframes") or not duration or frames < 1:
        return False
    if meta["keyframes"] < 2:
        return frames == 1
    return gap is not None and gap <= duration / frames


def decode_workload(meta: Mapping, frames: int, pixels: int | None = None,
                    decode: str = "exact") -> dict:
    """What decoding `frames` segment-sampled frames of a video costs, in the model's units.

    decode_frames keeps decoding towards the next target unless a keyframe lies before it, then
    seeks there. The targets are the server's: segment middles (video.sample_times, "test"),
    and with a keyframe every g frames (the index's mean spacing; one keyframe at the start
    without an index) the reader's path is followed target by target (`_exact_path`): phones
    and encoders place keyframes regularly, so where the middles fall in their GOPs is known,
    not a matter of chance (8 s at 30 fps, a keyframe a second, 4 frames: every target is a
    keyframe).

    decoded_frames  expected frames through the decoder (+SEEK_EXTRA_FRAMES per seek)
    decoded_mpx     decoded_frames x coded megapixels (the codec's pixel work)
    decoded_mbytes  exact decoding: decoded_frames x mean compressed frame size (entropy
                    decoding: a keyframe costs more than a P-frame because it has more bits)
    keyframe_mbytes keyframe mode: the keyframes' compressed size. A coefficient of its own:
                    a byte of a picture decoded on its own costs less than a byte of a run,
                    whose pictures are also predicted from others (fitted, 53 against 74 ms
                    per MB; one coefficient for both put held-out clips 85% within 25%,
                    two 90%, and leave-one-clip-out on the fitted clips 78% against 83%)
    seeks           expected seeks (decoder flushes)
    output_frames   distinct frames returned (a fixed cost each: conversion call, copies)
    converted_mpx   output_frames x (source + output) megapixels (resize + RGB conversion)

    decode="keyframe" (where keyframe_mode_applies): one seek and one keyframe per target, each
    of the index's mean keyframe size (else KEYFRAME_SHARE of a GOP's bytes)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    fps = meta.get("fps") or 25.0
    n = meta.get("num_frames") or (meta["duration_s"] * fps if meta.get("duration_s") else 10 * fps)
    n = max(1.0, float(n))
    gop_s = meta.get("keyframe_interval_s")
    g = min(max(1.0, gop_s * fps), n) if gop_s else n
    mean_bytes = (meta.get("size_bytes") or 0) / n
    if decode == "keyframe" and keyframe_mode_applies(meta, frames):
        seeks = decoded = float(frames)
        key_bytes = meta.get("keyframe_bytes") or KEYFRAME_SHARE * g * mean_bytes
        mbytes, key_mbytes = 0.0, decoded * key_bytes / 1e6
    elif decode in ("exact", "keyframe"):
        decoded, seeks = _exact_path(n, frames, g)
        decoded = min(n, decoded + SEEK_EXTRA_FRAMES * seeks)
        mbytes, key_mbytes = decoded * mean_bytes / 1e6, 0.0
    else:
        raise ValueError(f"decode must be 'exact' or 'keyframe', not {decode!r}")
    area = meta["coded_width"] * meta["coded_height"] / 1e6
    if pixels is None:  # no resize: the output is the source size
        out_area = area
    else:
        w, h = short_side_size(meta["width"], meta["height"], pixels)
        out_area = w * h / 1e6
    out = min(frames, n)
    return {"decoded_frames": decoded, "decoded_mpx": decoded * area, "decoded_mbytes": mbytes,
            "keyframe_mbytes": key_mbytes, "seeks": seeks, "output_frames": out,
            "converted_mpx": out * (area + out_area)}


def _exact_path(n: float, frames: int, g: float) -> tuple[float, float]:
    """(frames decoded, seeks) of exact decoding of `frames` segment middles of an n-frame video
    with a keyframe every g frames: a target past a keyframe the decoder has not reached is a
    seek to that keyframe and a run up to the target; otherwise the run goes on from the
    previous target."""
    segment, gop = n / frames, max(1, round(g))
    decoded = seeks = 0
    position = None
    for i in range(frames):
        target = min(int(n) - 1, int((i + 0.5) * segment))
        keyframe = target // gop * gop
        if position is None or keyframe > position:
            seeks += 1
            decoded += target - keyframe + 1
        else:
            decoded += target - position
        position = target
    return float(decoded), float(seeks)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class DecodeModel:
    """ms = const_ms + sum(coef_ms[t] x workload[t] for t in TERMS)
    + per_mpx_ms[codec] x workload["decoded_mpx"], with the terms of `decode_workload` and all
    coefficients >= 0.

    The per-pixel decoding cost depends on the codec; a codec not measured gets the dearest one
    measured (a budget is better kept than missed). `fit` holds the residuals of the fit."""

    const_ms: float
    coef_ms: dict
    per_mpx_ms: dict
    fit: dict = field(default_factory=dict, compare=False)

    def codec_mpx_ms(self, codec: str) -> float:
        if codec in self.per_mpx_ms:
            return self.per_mpx_ms[codec]
        return max(self.per_mpx_ms.values(), default=0.0)

    def predict_meta(self, meta: Mapping, frames: int, pixels: int | None = None,
                     decode: str = "exact") -> float:
        """predict_ms from a video_meta() dict (or a measurement sample)."""
        w = decode_workload(meta, frames, pixels, decode)
        return (self.const_ms + sum(self.coef_ms[t] * w[t] for t in TERMS)
                + self.codec_mpx_ms(meta["codec"]) * w["decoded_mpx"])

    def predict_ms(self, info: VideoInfo, frames: int, pixels: int | None = None,
                   decode: str = "exact") -> float:
        """Predicted ms of decode_frames(source, frames, short_side=pixels, info=info,
        decode_mode=decode) (the probe itself not included: the server has done it before it
        selects)."""
        return self.predict_meta(video_meta(info), frames, pixels, decode)

    @classmethod
    def fit_samples(cls, samples: Sequence[Mapping]) -> DecodeModel:
        """Least squares on relative error (rows weighted by 1/ms, the error the fit reports)
        with non-negative coefficients: the most negative coefficient is dropped (set to 0) and
        the rest refitted until none is negative. Samples: META_KEYS + frames, pixels, ms, and
        decode (the mode; "exact" when absent)."""
        if len(samples) < 2:
            raise ValueError(f"need at least 2 decode measurements to fit, got {len(samples)}")
        if not all(_finite(s.get("ms")) and s["ms"] > 0 for s in samples):
            raise ValueError("every decode measurement needs a positive, finite ms")
        codecs = sorted({s["codec"] for s in samples})
        names = ["const", *TERMS, *(f"mpx:{c}" for c in codecs)]
        rows = []
        for s in samples:
            w = decode_workload(s, s["frames"], s.get("pixels"), s.get("decode", "exact"))
            rows.append([1.0, *(w[t] for t in TERMS),
                         *(w["decoded_mpx"] if c == s["codec"] else 0.0 for c in codecs)])
        x = np.asarray(rows)
        y = np.asarray([float(s["ms"]) for s in samples])
        xw = x / y[:, None]  # (x.c - y) / y = (x / y).c - 1
        # equal column scales, so that lstsq's rank cut-off treats every term alike
        scale = np.abs(xw).max(0)
        scale[scale == 0] = 1.0
        active = list(range(len(names)))
        coef = np.zeros(len(names))
        while active:
            sol = np.linalg.lstsq(xw[:, active] / scale[active], np.ones_like(y), rcond=None)[0]
            sol = sol / scale[active]
            if (sol >= 0).all():
                coef[active] = sol
                break
            active.pop(int(np.argmin(sol)))
        c = dict(zip(names, coef.tolist()))
        model = cls(c["const"], {t: c[t] for t in TERMS}, {k: c[f"mpx:{k}"] for k in codecs})
        rel = np.abs(model.relative_errors(samples))
        fit = {"samples": len(samples), "codecs": codecs,
               "median_abs_rel_error": round(float(np.median(rel)), 4),
               "p90_abs_rel_error": round(float(np.percentile(rel, 90)), 4),
               "max_abs_rel_error": round(float(rel.max()), 4),
               "ms_range": [round(float(y.min()), 3), round(float(y.max()), 3)]}
        return cls(model.const_ms, model.coef_ms, model.per_mpx_ms, fit)

    def relative_errors(self, samples: Sequence[Mapping]) -> np.ndarray:
        """predicted / measured - 1 for each measurement (> 0: predicted too slow)."""
        return np.array([self.predict_meta(s, s["frames"], s.get("pixels"),
                                           s.get("decode", "exact")) / s["ms"] - 1
                         for s in samples])

    def to_dict(self) -> dict:
        return {"kind": DECODE_KIND,
                "formula": "const_ms + sum(coef_ms[t] * workload[t]) + per_mpx_ms[codec] * "
                           "workload['decoded_mpx'] (serving.profile.decode_workload); unknown "
                           "codec: the largest per_mpx_ms",
                "const_ms": self.const_ms, "coef_ms": dict(self.coef_ms),
                "per_mpx_ms": dict(self.per_mpx_ms), "fit": dict(self.fit)}

    @classmethod
    def from_dict(cls, d: Mapping) -> DecodeModel:
        """The inverse of to_dict; other keys (e.g. "samples") are ignored. ValueError naming
        every problem."""
        if not isinstance(d, Mapping):
            raise ValueError(f"decode_model must be an object, got {type(d).__name__}")
        problems = []
        if d.get("kind") != DECODE_KIND:
            problems.append(f"kind: expected {DECODE_KIND!r}, got {d.get('kind')!r}")
        if not (_finite(d.get("const_ms")) and d["const_ms"] >= 0):
            problems.append(f"const_ms: must be a finite number >= 0, got {d.get('const_ms')!r}")
        coef, per = d.get("coef_ms"), d.get("per_mpx_ms")
        if isinstance(coef, Mapping):
            coef = {**{t: coef[old] for t, old in _SAME_AS.items() if old in coef}, **coef}
        if not isinstance(coef, Mapping) or set(coef) != set(TERMS):
            problems.append(f"coef_ms: must be an object with keys {', '.join(TERMS)}, "
                            f"got {coef!r}")
        else:
            problems += [f"coef_ms.{k}: must be a finite number >= 0, got {v!r}"
                         for k, v in coef.items() if not (_finite(v) and v >= 0)]
        if not isinstance(per, Mapping) or not per:
            problems.append(f"per_mpx_ms: must be a non-empty object, got {per!r}")
        else:
            problems += [f"per_mpx_ms.{k}: must be a finite number >= 0, got {v!r}"
                         for k, v in per.items() if not (_finite(v) and v >= 0)]
        if problems:
            raise ValueError("invalid decode_model: " + "; ".join(problems))
        return cls(float(d["const_ms"]), {t: float(coef[t]) for t in TERMS},
                   {str(k): float(v) for k, v in per.items()}, dict(d.get("fit") or {}))


def heldout_report(model: DecodeModel, samples: Sequence[Mapping]) -> dict:
    """How well `model` predicts measurements it was not fitted on: the share within +-25%,
    the median and 90th percentile of |predicted / measured - 1|, and the median signed error
    (> 0: predicts too slow)."""
    if not samples:
        return {"samples": 0}
    rel = model.relative_errors(samples)
    return {"samples": len(samples),
            "within_25pct": round(float(np.mean(np.abs(rel) <= 0.25)), 4),
            "median_abs_rel_error": round(float(np.median(np.abs(rel))), 4),
            "p90_abs_rel_error": round(float(np.percentile(np.abs(rel), 90)), 4),
            "median_rel_error": round(float(np.median(rel)), 4)}


# ----------------------------------------------------------------------------- decode measurement
def _even(v: float) -> int:
    return max(2, 2 * round(v / 2))


def x264_options(gop: int, bframes: int | None = None) -> dict:
    options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    if bframes is not None:
        options["bf"] = str(bframes)
    return options


def write_test_video(path: Path, short_side: int, seconds: float, codec: str = "libx264",
                     gop: int = 12, fps: int = 25, seed: int = 0,
                     bframes: int | None = None) -> Path:
    """A 16:9 clip of a textured, panning picture with some noise (so it compresses like camera
    footage, not like a flat test card) in an .mp4. H.264 from x264's veryfast preset, as the
    camera clips and the synthetic dataset (High profile: CABAC, B-frames, deblocking):
    ultrafast's baseline streams decode 2-4x faster per byte and taught the model a cost that
    no camera file has. Keyframes every `gop` pictures exactly; `bframes`: x264's B-frames
    between references (None: the preset's)."""
    h, w = _even(short_side), _even(short_side * 16 / 9)
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:2 * h, 0:2 * w].astype(np.float32) * (128 / h)
    texture = np.stack([127 + 100 * np.sin(xx / 13 + yy / 29), 127 + 100 * np.sin(xx / 7 - yy / 17),
                        127 + 100 * np.cos((xx + yy) / 23)], -1)
    texture += rng.normal(0, 10, texture.shape).astype(np.float32)
    texture = np.clip(texture, 0, 255).astype(np.uint8)
    # a few noise planes cycled: temporal noise without drawing a fresh one per frame
    noise = rng.integers(-4, 5, (4, h, w, 1), dtype=np.int16)
    with av.open(str(path), mode="w", format="mp4") as container:
        if codec == "libx264":
            stream = container.add_stream(codec, rate=fps,
                                          options=x264_options(gop, bframes))
        else:
            stream = container.add_stream(codec, rate=fps)
            stream.codec_context.gop_size = gop
            stream.bit_rate = int(w * h * fps * 0.15)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)

        def pictures():
            for i in range(n):
                dy, dx = (i * h // (2 * n)), (i * w // (2 * n))  # pan by half the frame
                rgb = texture[dy:dy + h, dx:dx + w].astype(np.int16) + noise[i % len(noise)]
                yield np.clip(rgb, 0, 255).astype(np.uint8)

        encode_rgb(container, stream, pictures())
    return path


def write_test_videos(directory: Path, short_sides: Sequence[int] = (128, 240, 480),
                      durations: Sequence[float] = (2.0, 6.0),
                      codecs: Sequence[str] = ("libx264", "mpeg4"),
                      gops: Sequence[int] = (12, 250), fps: int = 25) -> list[Path]:
    """One video per (codec, short side, duration); the GOP alternates in a checkerboard over
    (size, duration) so that each codec has both short and long GOPs at every size."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for codec in codecs:
        for i, side in enumerate(short_sides):
            for j, seconds in enumerate(durations):
                gop = gops[(i + j) % len(gops)]
                path = directory / f"{codec}_{side}p_{seconds:g}s_g{gop}.mp4"
                paths.append(write_test_video(path, side, seconds, codec, gop, fps,
                                              seed=len(paths)))
    return paths


def measure_decode(paths: Sequence[Path], frames: Sequence[int], short_sides: Sequence[int],
                   repeats: int = 3, budget_s: float | None = None,
                   progress=None, decodes: Sequence[str] = ("exact", "keyframe"),
                   progress_start: int = 0) -> list[dict]:
    """Median ms of decode_frames(path, T, short_side=P, info=probe(path), decode_mode=D) per
    video, T, P and D in `decodes` (keyframe mode only where keyframe_mode_applies: elsewhere it
    is exact decoding), with the file's name, the video's metadata (META_KEYS), frames, pixels,
    decode, ms and what the decoder did (frames_decoded, seeks). The probe is not timed: the
    server probes before it selects. Stops early, with what it has, once budget_s seconds have
    passed; the jobs run in a seeded random order so that what it has still covers every video,
    T and P. `progress_start`: the jobs a shared `progress` counted before this call."""
    start = time.monotonic()
    samples = []
    infos = {path: None for path in paths}
    jobs = [(p, t, s, d) for p in paths for t in frames for s in short_sides for d in decodes]
    random.Random(0).shuffle(jobs)
    for i, (path, t, side, decode) in enumerate(jobs):
        if budget_s is not None and time.monotonic() - start > budget_s and len(samples) >= 2:
            break
        if infos[path] is None:
            infos[path] = probe(path)
            decode_frames(path, 1, info=infos[path])  # warm the file cache and FFmpeg
        info = infos[path]
        if decode != "exact" and not keyframe_mode_applies(video_meta(info), t):
            continue
        times = []
        for _ in range(repeats):
            stats = DecodeStats()
            t0 = time.perf_counter()
            decode_frames(path, t, short_side=side, info=info, stats=stats, decode_mode=decode)
            times.append((time.perf_counter() - t0) * 1e3)
        samples.append({"file": Path(path).name, **video_meta(info), "frames": t,
                        "pixels": side, "decode": decode,
                        "ms": round(float(np.median(times)), 4),
                        "frames_decoded": stats.frames_decoded, "seeks": stats.seeks})
        if progress is not None:
            progress.update(progress_start + i + 1,
                            f"{Path(path).name} {t} frames @{side}px {decode}")
    return samples
