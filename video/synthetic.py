"""Synthetic action-recognition benchmark: an actor doing labelled motions among small distractors on moving clutter.

    python -m video.synthetic --out DIR --clips N --seed S [--size 128] [--frames 64] [--workers 2]
    python -m video.synthetic --out DIR --clips N --seed S --preview     # DIR/preview.png only

writes DIR/clips/NNNNNN.mp4 (H.264, yuv420p, libx264), DIR/manifest.csv (``path,label,split``;
path relative to DIR, label the class name, split train/val/test 70/15/15 stratified per class)
and DIR/classes.json (the ordered class names). Everything is a function of the seed: the plan
(which clip has which class and split) comes from one random stream, every clip from its own
stream seeded by (seed, clip index), so the number of workers never changes a byte.

Each clip shows one *actor*: a two-tone, rotationally asymmetric shape (tadpole, T, L, flag or
key; 35-45 px long at 128 px, 2-3 patches of 16 px at 112; hues, shape, size, start position and orientation random per
clip and drawn from the same distributions for every class; light tints, brighter than the
background in every channel) with a dark 1.5 px outline, fully
opaque. Around it: a darker, faint low-frequency random texture with faint random shapes, panning slowly
(up to 8 px over the clip) in a random direction, 2-3 small *distractors* (the same shapes and
colours at 9-13 px, 30-45% opaque, no outline) drifting (up to 14 px) and turning (up to a
quarter turn) slowly, and mild per-pixel noise; --clutter scales all of these. The class is told
by what the actor does over time only: the first frame of every class comes from the same
distribution (the actor starts within +-14% of the frame centre whatever the class; a path that
would leave the frame is shifted back in, which at this actor size happens to most moves, so
where a move starts hints at its direction; which way it goes still takes two frames).
All spatial constants are given at 128 px and scale with --size; all timing is in fractions of
the clip, so --frames changes the sampling density of the same motion, not the motion.

Short-form classes (a motion of the actor):
  move_{e,ne,n,nw,w,sw,s,se}  straight constant-speed move in one of 8 compass directions
                               (+-10 deg jitter, 63-77 px over the clip)
  rotate_cw / rotate_ccw       turns in place, 0.3-0.45 turn per clip
  orbit_cw / orbit_ccw         circular path of radius 28-35 px, 0.45-0.65 revolution per clip
  grow / shrink                in place, size x1.6-1.9 / divided by 1.6-1.9
  still                        does nothing (only background, distractors and noise move)
Long-form classes (ordered sub-actions, like Breakfast/COIN): the clip is cut into 3 contiguous
segments of jittered length; in each the actor does one sub-action (move 56-70 px in a random
direction, spin 0.3-0.45 turn either way, grow x1.5-1.7), otherwise it rests.
  seq_move_spin_grow ... all 6 orders of (move, spin, grow): the same sub-actions, told apart
  only by their order.

DIFFICULTY. Every class is meant to stay recognisable from 4 frames at half the native frame
size, so that a model that handles the configuration change (StretchySnake) can stay accurate
everywhere, while one that saw a single configuration meets unfamiliar token grids, patch sizes
and sequence lengths: the benchmark tests robustness to the configuration, not the Nyquist limit.
* Frames: the turns stay under 60 deg between samples at 4 frames (no wrap-around aliasing);
  the order of the three sub-actions needs >= 1 sample inside the middle segment, which 4
  uniformly spaced frames give. benchmarks/oracle.py checks it: an MLP on the actor's poses at
  the 4 instants evaluation decodes (with pixel-sized errors) tells the 21 classes apart 100%.
* Pixels: the orientation (rotate_*, spin) is read from the two-tone head, 5-9 px at 56 px; the
  distractors are 4-6 px there and look like noise, as they do to a model at 112 px that learnt
  to ignore them.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
import time
import zlib
from fractions import Fraction

import numpy as np

from common.progress import Progress

NATIVE = 128  # spatial constants below are pixels at this frame size
# The actor's size and every distance it travels, relative to the constants written below. At 1.0
# the actor covered about half a 16 px patch and nano stayed near chance (9.8% top-1 after 400
# steps of 16 clips against 35.5% at 1.75; a 3-D CNN with a 4 px stem learnt either): a linear
# patch embedding needs the actor to span patches before its motion changes the tokens much.
ACTOR_SCALE = 1.75
# HSV saturation and value of objects and the background's base value: the lowest channel of an
# object (value x (1 - saturation) >= 0.53) stays above the brightest background channel
# (0.45 plus the texture's faint waves).
ACTOR_SATURATION = (0.15, 0.4)
ACTOR_LIGHT = (0.88, 1.0)
BACKGROUND_VALUE = (0.2, 0.45)

DIRECTIONS = {"e": 0, "ne": 45, "n": 90, "nw": 135, "w": 180, "sw": 225, "s": 270, "se": 315}
SHORT_CLASSES = tuple(f"move_{d}" for d in DIRECTIONS) + (
    "rotate_cw", "rotate_ccw", "orbit_cw", "orbit_ccw", "grow", "shrink", "still")
SUB_ACTIONS = ("move", "spin", "grow")
# every order of the three sub-actions is a class of its own
SEQUENCES = {"seq_" + "_".join(order): order for order in itertools.permutations(SUB_ACTIONS)}
LONG_CLASSES = tuple(SEQUENCES)
CLASSES = SHORT_CLASSES + LONG_CLASSES
FAMILY = {**{c: "short" for c in SHORT_CLASSES}, **{c: "long" for c in LONG_CLASSES}}

# Actor/distractor shapes in unit coordinates (long axis ~1, centred on the origin), as unions of
# ("box", cx, cy, half_w, half_h) and ("circle", cx, cy, r). The first primitive is the "head",
# drawn in the second colour so that the orientation shows. None has a rotational symmetry.
SHAPES = (
    (("circle", 0.30, 0.0, 0.20), ("box", -0.15, 0.0, 0.35, 0.09)),  # tadpole
    (("box", 0.38, 0.0, 0.10, 0.32), ("box", -0.12, 0.0, 0.40, 0.10)),  # T
    (("box", 0.40, -0.14, 0.10, 0.26), ("box", -0.05, 0.12, 0.45, 0.10)),  # L
    (("box", 0.26, -0.17, 0.16, 0.15), ("box", -0.05, 0.0, 0.45, 0.07)),  # flag
    (("circle", 0.32, 0.0, 0.18), ("box", -0.15, 0.0, 0.35, 0.07), ("box", -0.42, 0.11, 0.06, 0.11)),  # key
)
SHAPE_RADIUS = 0.62  # no shape reaches further than this from its centre (unit coordinates)

SPLITS = (("train", 0.70), ("val", 0.15), ("test", 0.15))


# ---------------------------------------------------------------------------------------------
# Random streams

def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of clip ``index``: independent of every other clip and of the plan."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))


def plan_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))


# ---------------------------------------------------------------------------------------------
# Motion: per-frame actor state as a function of clip time t in [0, 1]

def _ramp(t, t0, t1):
    return np.clip((t - t0) / max(t1 - t0, 1e-6), 0.0, 1.0)


def actor_track(class_name: str, rng: np.random.Generator, t: np.ndarray, k: float) -> dict:
    """Per-frame offsets (dx, dy, px at size 128*k), angle (rad, clockwise on screen), log-scale and
    visibility of the actor for one clip of ``class_name``. Pure function of its arguments."""
    n = len(t)
    dx, dy, ang, logs, vis = (np.zeros(n) for _ in range(5))
    vis += 1.0
    name = class_name
    if name.startswith("move_"):
        a = np.deg2rad(DIRECTIONS[name[5:]] + rng.uniform(-10, 10))
        r = _ramp(t, rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)) * rng.uniform(36, 44) * k * ACTOR_SCALE
        dx, dy = r * np.cos(a), -r * np.sin(a)  # screen y points down; "n" is up
    elif name in ("rotate_cw", "rotate_ccw"):
        sign = 1.0 if name == "rotate_cw" else -1.0
        ang = sign * 2 * np.pi * rng.uniform(0.3, 0.45) * t
    elif name in ("orbit_cw", "orbit_ccw"):
        sign = 1.0 if name == "orbit_cw" else -1.0
        radius = rng.uniform(16, 20) * k * ACTOR_SCALE
        phi = rng.uniform(0, 2 * np.pi) + sign * 2 * np.pi * rng.uniform(0.45, 0.65) * t
        dx, dy = radius * np.cos(phi), radius * np.sin(phi)  # y down: increasing phi is clockwise
    elif name in ("grow", "shrink"):
        sign = 1.0 if name == "grow" else -1.0
        logs = sign * np.log(rng.uniform(1.6, 1.9)) * _ramp(t, rng.uniform(0, 0.1), rng.uniform(0.9, 1.0))
    elif name == "still":
        pass
    elif name in SEQUENCES:
        steps = SEQUENCES[name]
        lead, tail = rng.uniform(0, 0.06, size=2)
        widths = 1 + rng.uniform(-0.2, 0.2, size=len(steps))
        edges = lead + np.concatenate([[0], np.cumsum(widths / widths.sum())]) * (1 - lead - tail)
        for step, s0, s1 in zip(steps, edges[:-1], edges[1:]):
            pad0, pad1 = rng.uniform(0.02, 0.08, size=2) * (s1 - s0)
            a0, a1 = s0 + pad0, s1 - pad1
            r = _ramp(t, a0, a1)
            if step == "move":
                a = rng.uniform(0, 2 * np.pi)
                dist = rng.uniform(32, 40) * k * ACTOR_SCALE
                dx = dx + dist * r * np.cos(a)
                dy = dy + dist * r * np.sin(a)
            elif step == "spin":
                ang = ang + rng.choice([-1.0, 1.0]) * 2 * np.pi * rng.uniform(0.3, 0.45) * r
            elif step == "grow":
                logs = logs + np.log(rng.uniform(1.5, 1.7)) * r
            else:  # pragma: no cover - SEQUENCES is a constant
                raise AssertionError(step)
    else:
        raise ValueError(f"unknown class {class_name!r}; known: {', '.join(CLASSES)}")
    return {"dx": dx, "dy": dy, "ang": ang, "logs": logs, "vis": vis}


FULL_CLIP = np.linspace(0.0, 1.0, 64)  # the instants of an encoded clip at the default length


def _twin(rng: np.random.Generator) -> np.random.Generator:
    """A generator that will draw what `rng` draws next (rng itself is left untouched)."""
    twin = np.random.Generator(type(rng.bit_generator)())
    twin.bit_generator.state = rng.bit_generator.state
    return twin


def actor_pose(class_name: str, rng: np.random.Generator, t: np.ndarray, size: int,
               whole_clip: bool = True) -> dict:
    """Where the actor is drawn at instants ``t``: centre x, y (px), angle (rad), length (px along
    its long axis) and visibility per instant, at frame size ``size``; everything about the actor
    that the class shows (benchmarks/oracle.py classifies from it). ``whole_clip``: ``t`` spans
    the whole clip; otherwise the path is laid out on the full clip's frames so that its start and
    extent do not depend on which instants are drawn."""
    k = size / NATIVE
    base_len = rng.uniform(20, 26) * k * ACTOR_SCALE
    base_ang = rng.uniform(0, 2 * np.pi)
    whole = _twin(rng)
    track = actor_track(class_name, rng, t, k)
    path = track if whole_clip else actor_track(class_name, whole, FULL_CLIP, k)
    # First-frame position from one class-independent distribution (centre +-14% of the frame);
    # only if a path would leave the frame is it shifted back in (most moves: the actor is big).
    margin = SHAPE_RADIUS * float(base_len * np.exp(path["logs"]).max()) + 2 * k + 1
    pos = []
    for d, d_path in ((track["dx"], path["dx"]), (track["dy"], path["dy"])):
        d, d_path = d - d_path[0], d_path - d_path[0]
        start = size * rng.uniform(0.36, 0.64)
        lo, hi = margin - d_path.min(), size - margin - d_path.max()
        pos.append(d + (min(max(start, lo), hi) if hi > lo else 0.5 * (lo + hi)))
    return {"x": pos[0], "y": pos[1], "ang": base_ang + track["ang"], "length": base_len * np.exp(track["logs"]),
            "vis": track["vis"]}


# ---------------------------------------------------------------------------------------------
# Drawing

def _hsv(h, s, v):
    """HSV in [0, 1] to RGB in [0, 255] (scalars)."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, u = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, u, p), (q, v, p), (p, v, u), (p, q, v), (u, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _two_tone(rng):
    """Body and head colours of an actor or distractor: light tints, hues at least 120 deg apart,
    every channel above any background's (ACTOR_LIGHT, BACKGROUND_VALUE). The actor's hue is
    random, its polarity is not: a model trained from scratch on a few thousand clips finds
    motion in a sign-consistent contrast within a few hundred steps, and not at all in 2,000
    when each clip's colours flip the sign channel by channel."""
    hue = rng.uniform()
    body = _hsv(hue, rng.uniform(*ACTOR_SATURATION), rng.uniform(*ACTOR_LIGHT))
    head = _hsv((hue + rng.uniform(1 / 3, 2 / 3)) % 1.0, rng.uniform(*ACTOR_SATURATION), rng.uniform(*ACTOR_LIGHT))
    return body, head


def _shape_sdf(shape, u, v):
    """Signed distance (unit coordinates) to the whole shape and to its head primitive."""
    out = []
    for prim in shape:
        if prim[0] == "circle":
            _, cx, cy, r = prim
            d = np.hypot(u - cx, v - cy) - r
        else:
            _, cx, cy, hw, hh = prim
            qx, qy = np.abs(u - cx) - hw, np.abs(v - cy) - hh
            d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        out.append(d)
    return np.minimum.reduce(out), out[0]


def _draw_object(canvas, pad, x, y, ang, length, vis, shape, body, head, alpha, outline_px, outline_rgb):
    """Composite one object onto every frame of ``canvas`` (T, H+2pad, W+2pad, 3; float32).
    x, y, ang, length, vis: per-frame arrays (length in px along the shape's long axis)."""
    n = len(x)
    half = int(math.ceil(SHAPE_RADIUS * float(length.max()) + outline_px + 2))
    w = 2 * half + 1
    x0 = np.floor(x).astype(int) - half  # window origin, frame coordinates
    y0 = np.floor(y).astype(int) - half
    grid = np.arange(w) + 0.5
    px = x0[:, None, None] + grid[None, None, :] - x[:, None, None]  # (T, 1, w)
    py = y0[:, None, None] + grid[None, :, None] - y[:, None, None]  # (T, w, 1)
    c, s = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    inv = 1.0 / length[:, None, None]
    u = (c * px + s * py) * inv  # rotate by -ang into the shape's frame
    v = (-s * px + c * py) * inv
    sdf, sdf_head = _shape_sdf(shape, u, v)
    sdf_px, head_px = sdf / inv, sdf_head / inv
    cover = np.clip(0.5 - sdf_px, 0, 1) * (alpha * vis[:, None, None])
    headness = np.clip(0.5 - head_px, 0, 1)
    colour = body + (head - body) * headness[..., None]  # (T, w, w, 3)
    ring = None
    if outline_px > 0:
        ring = np.clip(0.5 - (sdf_px - outline_px), 0, 1) * (alpha * vis[:, None, None])
    H = canvas.shape[1]
    for j in range(n):
        xa, ya = x0[j] + pad, y0[j] + pad
        if xa < 0 or ya < 0 or xa + w > H or ya + w > H:
            continue  # fully outside the padded frame: never happens for the actor
        region = canvas[j, ya:ya + w, xa:xa + w]
        if ring is not None:
            a = ring[j][..., None]
            region += (outline_rgb - region) * a
        a = cover[j][..., None]
        region += (colour[j] - region) * a


def _background(rng, size, t, k, clutter=1.0):
    """(len(t), size, size, 3) float32: low-frequency texture and faint shapes, panning slowly
    (t: the instants drawn, fractions of the clip)."""
    frames = len(t)
    pan = rng.uniform(0, 8) * k * clutter
    pan_dir = rng.uniform(0, 2 * np.pi)
    margin = int(math.ceil(pan)) + 2
    big = size + 2 * margin
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / size
    tex = np.broadcast_to(_hsv(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(*BACKGROUND_VALUE)).astype(np.float32),
                          (big, big, 3)).copy()
    for _ in range(5):
        a = rng.uniform(0, 2 * np.pi)
        f = rng.uniform(0.5, 3.0) * 2 * np.pi
        wave = np.cos(f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 2 * np.pi))
        tex += wave[..., None] * (rng.uniform(-5, 5, size=3) * clutter).astype(np.float32)
    for _ in range(int(rng.integers(15, 31))):
        cx, cy = rng.uniform(0, big, size=2)
        r = rng.uniform(3, 14) * k
        col = _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.9)).astype(np.float32)
        px, py = xx * size - cx, yy * size - cy
        if rng.uniform() < 0.5:
            d = np.hypot(px, py) - r
        else:
            d = np.maximum(np.abs(px), np.abs(py) * rng.uniform(0.5, 2)) - r
        a = np.clip(0.5 - d, 0, 1) * min(1.0, rng.uniform(0.05, 0.15) * clutter)
        tex += (col - tex) * a[..., None]
    ox = margin + (t - 0.5) * pan * np.cos(pan_dir)
    oy = margin + (t - 0.5) * pan * np.sin(pan_dir)
    out = np.empty((frames, size, size, 3), np.float32)
    for j in range(frames):  # bilinear sub-pixel crop
        ix, iy = int(ox[j]), int(oy[j])
        fx, fy = np.float32(ox[j] - ix), np.float32(oy[j] - iy)
        a = tex[iy:iy + size + 1, ix:ix + size + 1]
        top = a[:-1, :-1] * (1 - fx) + a[:-1, 1:] * fx
        bot = a[1:, :-1] * (1 - fx) + a[1:, 1:] * fx
        out[j] = top * (1 - fy) + bot * fy
    return out


def render_clip(class_name: str, rng: np.random.Generator, size: int = 128, frames: int = 64,
                clutter: float = 1.0, times=None) -> np.ndarray:
    """One clip of ``class_name`` as uint8 (frames, size, size, 3) RGB; a pure function of its
    arguments (it only draws from ``rng``). ``clutter`` scales the background contrast, pan,
    distractor opacity and noise without changing what is drawn from ``rng``. ``times``: the
    instants to draw, as fractions of the clip in [0, 1] (default: ``frames`` evenly spaced from
    0 to 1, the frames of an encoded clip); training renders just the frames it samples."""
    if class_name not in FAMILY:
        raise ValueError(f"unknown class {class_name!r}; known: {', '.join(CLASSES)}")
    if times is None:
        if frames < 2:
            raise ValueError(f"frames must be >= 2, got {frames}")
        t = np.linspace(0.0, 1.0, frames)
    else:
        t = np.asarray(times, dtype=np.float64)
        if t.ndim != 1 or len(t) < 1 or t.min() < 0 or t.max() > 1:
            raise ValueError("times must be a non-empty 1-D sequence of fractions in [0, 1]")
        frames = len(t)
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    k = size / NATIVE
    # Everything below is drawn in the same order for every class, so that the class-independent
    # parts (background, distractors, actor look) have the same distribution for every class.
    bg = _background(rng, size, t, k, clutter)
    pad = int(math.ceil(48 * k)) + 4
    canvas = np.zeros((frames, size + 2 * pad, size + 2 * pad, 3), np.float32)
    canvas[:, pad:pad + size, pad:pad + size] = bg
    # distractors: look like actors, but translucent, no outline, slow drift and turn
    for _ in range(int(rng.integers(2, 4))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        body, head = _two_tone(rng)
        length = np.full(frames, rng.uniform(9, 13) * k)
        x = rng.uniform(0, size) + (t - 0.5) * rng.uniform(-14, 14) * k
        y = rng.uniform(0, size) + (t - 0.5) * rng.uniform(-14, 14) * k
        ang = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.25, 0.25) * 2 * np.pi * t
        _draw_object(canvas, pad, x, y, ang, length, np.ones(frames), shape, body, head,
                     min(1.0, rng.uniform(0.3, 0.45) * clutter), 0.0, None)
    # the actor
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    body, head = _two_tone(rng)
    outline_rgb = _hsv(rng.uniform(), 0.3, rng.uniform(0.0, 0.12))
    pose = actor_pose(class_name, rng, t, size, whole_clip=times is None)
    _draw_object(canvas, pad, pose["x"], pose["y"], pose["ang"], pose["length"], pose["vis"], shape,
                 body, head, 1.0, 1.5 * k, outline_rgb)
    out = canvas[:, pad:pad + size, pad:pad + size]
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(2, 4) * clutter)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Encoding

def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB to a planar yuv420p picture, (H * 3 // 2, W) uint8: BT.601 limited
    range (what decoders assume for untagged video), chroma averaged over 2x2 blocks."""
    rgb = frame.astype(np.float32)
    h, w, _ = rgb.shape
    y = 16 + rgb @ np.array([0.256788, 0.504129, 0.097906], np.float32)
    sub = rgb.reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
    u = 128 + sub @ np.array([-0.148223, -0.290993, 0.439216], np.float32)
    v = 128 + sub @ np.array([0.439216, -0.367788, -0.071427], np.float32)
    planes = [np.clip(p + 0.5, 0, 255).astype(np.uint8) for p in (y, u, v)]
    return np.concatenate([planes[0], planes[1].reshape(h // 4, w), planes[2].reshape(h // 4, w)])


def encode_mp4(frames: np.ndarray, path: str, fps: int = 16, crf: int = 20, preset: str = "veryfast",
               gop: int | None = None) -> None:
    """Write uint8 (T, H, W, 3) RGB frames as H.264 (libx264, yuv420p) in an .mp4 at ``path``.
    The colour conversion is ours (numpy), x264 runs single-threaded and without mbtree, so the
    same frames always give the same bytes. `gop`: frames from one keyframe to the next, exactly
    (None: x264's default, 250, so one keyframe in a clip this short)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 4 or w % 2:
        raise ValueError(f"frame height must be a multiple of 4 and width even, got {w}x{h}")
    with av.open(path, mode="w", format="mp4") as container:
        # mbtree off: with it, short clips (fewer frames than the lookahead) were found to encode
        # differently from run to run.
        options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
        if gop is not None:
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frames[i]), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ---------------------------------------------------------------------------------------------
# Dataset plan, generation, preview

def make_plan(num_clips: int, seed: int, classes=CLASSES) -> list[tuple[str, str, str]]:
    """[(relative path, class name, split)] for clips 0..num_clips-1: classes balanced (counts
    differ by at most one) in a seeded random order, splits 70/15/15 stratified per class."""
    classes = tuple(classes)
    if num_clips < len(classes):
        raise ValueError(f"need at least one clip per class: {num_clips} clips < {len(classes)} classes")
    rng = plan_rng(seed)
    labels = rng.permutation(np.arange(num_clips) % len(classes))
    splits = [""] * num_clips
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_val, n_test = round(SPLITS[1][1] * n), round(SPLITS[2][1] * n)
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = n - n_val - n_test
        for i, idx in enumerate(members):
            splits[idx] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return [(f"clips/{i:06d}.mp4", classes[labels[i]], splits[i]) for i in range(num_clips)]


def _make_one(job):
    out_dir, index, rel, label, seed, size, frames, fps, crf, clutter, gop = job
    clip = render_clip(label, clip_rng(seed, index), size, frames, clutter)
    path = os.path.join(out_dir, rel)
    tmp = f"{path}.tmp{os.getpid()}.mp4"
    encode_mp4(clip, tmp, fps=fps, crf=crf, gop=gop)
    os.replace(tmp, path)
    return index


def generate(out_dir: str, num_clips: int, seed: int, size: int = 128, frames: int = 64,
             workers: int = 2, classes=CLASSES, fps: int = 16, crf: int = 20, clutter: float = 1.0,
             progress=True, gop: int | None = None) -> list:
    """Render and encode the dataset into ``out_dir``; returns the plan (see make_plan).
    `gop`: frames between keyframes (None: one keyframe per clip, as x264's default gives)."""
    plan = make_plan(num_clips, seed, classes)
    os.makedirs(os.path.join(out_dir, "clips"), exist_ok=True)
    jobs = [(out_dir, i, rel, label, seed, size, frames, fps, crf, clutter, gop)
            for i, (rel, label, _) in enumerate(plan)]
    start = time.time()
    line = Progress(num_clips, "clips", interval=10, enabled=progress)

    def report(done):
        el = time.time() - start
        line.update(done, f"{el:.0f} s elapsed, ~{el / done * (num_clips - done):.0f} s left")

    if workers <= 1:
        for done, job in enumerate(jobs, 1):
            _make_one(job)
            report(done)
    else:
        import multiprocessing as mp
        with mp.get_context("spawn" if sys.platform == "win32" else "fork").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_make_one, jobs, chunksize=4), 1):
                report(done)
    line.close()
    with open(os.path.join(out_dir, "manifest.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows(plan)
    with open(os.path.join(out_dir, "classes.json"), "w") as f:
        json.dump(list(classes), f, indent=1)
        f.write("\n")
    return plan


# A 3x5 pixel font for the preview labels (rows top to bottom, '#' = ink).
_FONT = dict(zip(
    "abcdefghijklmnopqrstuvwxyz0123456789_- ",
    """.#. #.# ### #.# #.#|##. #.# ##. #.# ##.|.## #.. #.. #.. .##|##. #.# #.# #.# ##.|### #.. ##. #.. ###|
    ### #.. ##. #.. #..|.## #.. #.# #.# .##|#.# #.# ### #.# #.#|### .#. .#. .#. ###|..# ..# ..# #.# .#.|
    #.# #.# ##. #.# #.#|#.. #.. #.. #.. ###|#.# ### ### #.# #.#|##. #.# #.# #.# #.#|.#. #.# #.# #.# .#.|
    ##. #.# ##. #.. #..|.#. #.# #.# ##. .##|##. #.# ##. #.# #.#|.## #.. .#. ..# ##.|### .#. .#. .#. .#.|
    #.# #.# #.# #.# ###|#.# #.# #.# #.# .#.|#.# #.# ### ### #.#|#.# #.# .#. #.# #.#|#.# #.# .#. .#. .#.|
    ### ..# .#. #.. ###|### #.# #.# #.# ###|.#. ##. .#. .#. ###|##. ..# .#. #.. ###|##. ..# .#. ..# ##.|
    #.# #.# ### ..# ..#|### #.. ##. ..# ##.|.## #.. ### #.# ###|### ..# .#. .#. .#.|### #.# ### #.# ###|
    ### #.# ### ..# ##.|... ... ... ... ###|... ... ### ... ...|... ... ... ... ...""".split("|")))


def _text(img, x, y, text, scale=2, colour=(255, 255, 255)):
    for ch in text.lower():
        rows = _FONT.get(ch, _FONT[" "]).split()
        for r, row in enumerate(rows):
            for c, px in enumerate(row):
                if px == "#":
                    img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = colour
        x += 4 * scale


def write_png(path: str, image: np.ndarray) -> None:
    """Minimal PNG writer (8-bit RGB, no filtering) with zlib; no imaging library needed."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind, data):
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def preview_image(num_clips: int, seed: int, size: int = 128, frames: int = 64, classes=CLASSES,
                  columns: int = 8, clutter: float = 1.0) -> np.ndarray:
    """Contact sheet: one row per class (the first clip of that class in the dataset plan),
    ``columns`` frames sampled uniformly over the clip, the class name on the left."""
    plan = make_plan(num_clips, seed, classes)
    first = {}
    for i, (_, label, _) in enumerate(plan):
        first.setdefault(label, i)
    label_w, gap = 4 * 2 * max(len(c) for c in classes) + 8, 2
    sheet = np.full((len(classes) * (size + gap) + gap, label_w + columns * (size + gap) + gap, 3), 24, np.uint8)
    cols = np.linspace(0, frames - 1, columns).round().astype(int)
    for r, name in enumerate(classes):
        clip = render_clip(name, clip_rng(seed, first[name]), size, frames, clutter)
        y = gap + r * (size + gap)
        _text(sheet, 4, y + size // 2 - 5, name)
        for c, j in enumerate(cols):
            x = label_w + gap + c * (size + gap)
            sheet[y:y + size, x:x + size] = clip[j]
    return sheet


# ---------------------------------------------------------------------------------------------
# CLI

def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m video.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--clips", type=int, required=True, help="number of clips (>= number of classes)")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels (multiple of 4, >= 32; default 128)")
    p.add_argument("--frames", type=int, default=64, help="frames per clip (>= 4; default 64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--classes", default=None,
                   help="comma-separated subset of class names (default: all); --list-classes shows them")
    p.add_argument("--fps", type=int, default=16, help="frame rate written in the mp4 (default 16)")
    p.add_argument("--crf", type=int, default=20, help="x264 constant rate factor, 0-51 (default 20)")
    p.add_argument("--gop", type=int, default=None,
                   help="frames from one keyframe to the next (default: x264's 250, so one "
                        "keyframe per clip); e.g. 8 at 16 fps for a keyframe every 0.5 s")
    p.add_argument("--clutter", type=float, default=1.0,
                   help="scales background contrast, pan, distractor opacity and noise (0 = clean "
                        "background, no distractors; default 1.0); the layout of each clip stays the same")
    p.add_argument("--preview", action="store_true",
                   help="write only DIR/preview.png (first clip of each class, 8 frames each), no videos")
    p.add_argument("--list-classes", action="store_true", help="print the classes with their family and exit")
    if "--list-classes" in argv:
        for name in CLASSES:
            print(f"{name}\t{FAMILY[name]}")
        raise SystemExit(0)
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error(f"--clips must be >= 1, got {args.clips}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.size < 32 or args.size % 4:
        p.error(f"--size must be a multiple of 4 and >= 32 (H.264 yuv420p), got {args.size}")
    if args.frames < 4:
        p.error(f"--frames must be >= 4, got {args.frames}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.fps < 1:
        p.error(f"--fps must be >= 1, got {args.fps}")
    if not 0 <= args.crf <= 51:
        p.error(f"--crf must be in 0..51, got {args.crf}")
    if args.gop is not None and args.gop < 1:
        p.error(f"--gop must be >= 1, got {args.gop}")
    if not 0 <= args.clutter <= 3:
        p.error(f"--clutter must be in 0..3, got {args.clutter}")
    if args.classes is None:
        args.classes = CLASSES
    else:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        unknown = [c for c in names if c not in FAMILY]
        if unknown or not names:
            p.error(f"unknown class name(s) in --classes: {', '.join(unknown) or '(none given)'}; "
                    f"known: {', '.join(CLASSES)}")
        if len(set(names)) != len(names):
            p.error("--classes lists a class twice")
        args.classes = tuple(c for c in CLASSES if c in names)  # canonical order
    if args.clips < len(args.classes):
        p.error(f"--clips {args.clips} is fewer than the {len(args.classes)} classes; "
                f"every class needs at least one clip")
    return args


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    os.makedirs(args.out, exist_ok=True)
    if args.preview:
        path = os.path.join(args.out, "preview.png")
        write_png(path, preview_image(args.clips, args.seed, args.size, args.frames, args.classes,
                                        clutter=args.clutter))
        print(f"wrote {path}")
        return 0
    print(f"rendering {args.clips} clips of {len(args.classes)} classes, {args.frames} frames x "
          f"{args.size} px, seed {args.seed}, {args.workers} worker(s) -> {args.out}", flush=True)
    start = time.time()
    generate(args.out, args.clips, args.seed, args.size, args.frames, args.workers, args.classes,
             args.fps, args.crf, args.clutter, gop=args.gop)
    total = sum(os.path.getsize(os.path.join(args.out, "clips", f)) for f in os.listdir(os.path.join(args.out, "clips"))
                if f.endswith(".mp4"))
    print(f"done in {time.time() - start:.1f}s; wrote manifest.csv, classes.json; "
          f"clips directory {total / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
