"""Camera- and phone-like test videos: what users upload, for measuring decoding (the synthetic
action clips of `video.synthetic` are 128 px and flat; the profiler's test videos pan a noise
texture, whose keyframes are far heavier than a camera's).

A scene larger than the frame (smooth colour gradients and mid-frequency texture, as an
in-focus, denoised picture), filmed hand-held (a slow pan with some shake), with an object
crossing it and the sensor grain left after the phone's denoising, encoded the way phones
encode: H.264 with B-frames, a keyframe every `gop_s` seconds, at a phone's bit rate (about
16 Mbit/s at 1080p30, scaled by pixels per second; a flat test card at that rate would spend
its bits on nothing, which is why the picture has texture and grain).

    write_camera_clip("phone.mp4", 1920, 1080, seconds=10, fps=30, gop_s=1.0)
    for spec in realistic_set():            # 480p to 4K, H.264/HEVC/VP9/AV1, rotated, ...
        spec.write(directory)

Standard PyAV and numpy only (the `video` package imports nothing else of the repository).
"""
from __future__ import annotations

import csv
import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .corpus import can_encode

# realistic_set's clips, one per row (a data table, so kept as data)
CLIP_TABLE = Path(__file__).with_name("camera_clips.csv")


def _scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 (H, W, 3) picture: colour gradients plus blurred texture."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([120 + 60 * np.sin(xx / 157 + yy / 211 + phase[0]),
                     110 + 50 * np.sin(xx / 97 - yy / 131 + phase[1]),
                     100 + 60 * np.cos((xx + yy) / 181 + phase[2])], -1)
    # texture: coarse noise upsampled by 8 and box-blurred (leaves, walls, fabric in focus)
    coarse = rng.normal(0, 1, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :width]
    for axis in (0, 1):
        texture = (texture + np.roll(texture, 3, axis) + np.roll(texture, -3, axis)) / 3
    return np.clip(base + 18 * texture, 0, 255)


PHONE_BITS_PER_PIXEL = 16e6 / (1920 * 1080 * 30)   # ~0.26 bit per pixel and frame


def write_camera_clip(path, width: int, height: int, seconds: float, fps: float = 30,
                      gop_s: float = 1.0, codec: str = "libx264", bit_rate: int | None = None,
                      preset: str = "veryfast", noise: float = 2.0, seed: int = 0,
                      rotation: int = 0) -> Path:
    """Encode a hand-held camera clip (see the module docstring) into `path` (an .mp4 or
    .mkv/.webm for VP9 and AV1); returns the path. `gop_s`: seconds between keyframes;
    `bit_rate`: bits per second (default: a phone's for this size and rate); `rotation`:
    degrees in the container's display matrix (a phone held upright stores landscape pictures
    and 90)."""
    path = Path(path)
    width, height = width - width % 2, height - height % 2
    rng = np.random.default_rng(seed)
    margin_y, margin_x = height // 5, width // 5
    scene = _scene(height + 2 * margin_y, width + 2 * margin_x, rng)
    n = max(1, round(seconds * fps))
    keyint = max(1, round(gop_s * fps))
    rate = Fraction(fps).limit_denominator(1001)
    bit_rate = bit_rate or int(PHONE_BITS_PER_PIXEL * width * height * float(fps))
    radius = max(8, height // 10)
    yy, xx = np.mgrid[0:2 * radius, 0:2 * radius]
    disc = ((yy - radius) ** 2 + (xx - radius) ** 2) < radius ** 2

    def pictures():
        for i in range(n):
            t = i / float(fps)
            dy = int(margin_y + margin_y * 0.8 * np.sin(0.5 * t) + rng.normal(0, 1.5))
            dx = int(margin_x + margin_x * 0.8 * np.sin(0.3 * t + 1.0) + rng.normal(0, 1.5))
            dy, dx = min(max(dy, 0), 2 * margin_y), min(max(dx, 0), 2 * margin_x)
            image = scene[dy:dy + height, dx:dx + width].copy()
            # an object crossing the frame
            cy = int(height / 2 + height / 4 * np.sin(0.9 * t)) - radius
            cx = int((t * width / 4) % (width - 2 * radius))
            cy = min(max(cy, 0), height - 2 * radius)
            image[cy:cy + 2 * radius, cx:cx + 2 * radius][disc] = (200, 60, 40)
            image += rng.normal(0, noise, (height, width, 1)).astype(np.float32)
            yield np.clip(image, 0, 255).astype(np.uint8)

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=_encoder_options(codec, keyint,
                                                                               preset))
        if codec not in ("libx264", "libx265"):
            stream.codec_context.gop_size = keyint
        stream.bit_rate = bit_rate
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / rate
        if rotation:
            stream.set_display_rotation(rotation)
        encode_rgb(container, stream, pictures())
    return path


def _encoder_options(codec: str, keyint: int, preset: str) -> dict:
    """A fixed keyframe interval, and each encoder's fast settings (the pictures matter for
    decoding, not the encoder's care)."""
    if codec in ("libx264", "libx265"):
        options = {"preset": preset, "g": str(keyint), "keyint_min": str(keyint),
                   "sc_threshold": "0"}
        if codec == "libx265":  # x265 has no keyint_min/sc_threshold options of its own
            options = {"preset": "ultrafast",
                       "x265-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:"
                                      f"log-level=error"}
        return options
    if codec == "libvpx-vp9":
        return {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
    if codec == "libsvtav1":
        return {"preset": "12", "svtav1-params": f"keyint={keyint}:scd=0"}
    return {}


@dataclasses.dataclass(frozen=True)
class CameraClip:
    """One clip of `realistic_set`: what `write` encodes, and the file name it uses."""

    width: int
    height: int
    fps: float
    seconds: float
    gop_s: float
    codec: str = "libx264"
    rotation: int = 0

    @property
    def name(self) -> str:
        ext = {"libvpx-vp9": "webm", "libsvtav1": "mkv"}.get(self.codec, "mp4")
        rot = f"-rot{self.rotation}" if self.rotation else ""
        return (f"{self.codec.removeprefix('lib')}-{self.width}x{self.height}-{self.fps:g}fps-"
                f"{self.seconds:g}s-gop{self.gop_s:g}{rot}.{ext}")

    def write(self, directory, seed: int = 0) -> Path:
        """Encode into `directory` (once: an existing file is kept)."""
        path = Path(directory) / self.name
        if not path.exists():
            part = path.with_name("part-" + path.name)
            write_camera_clip(part, self.width, self.height, self.seconds, self.fps, self.gop_s,
                              self.codec, seed=seed, rotation=self.rotation)
            part.rename(path)
        return path


def realistic_set(encoders=None) -> list[CameraClip]:
    """Camera- and phone-like clips for fitting and checking the decode-cost model: 480p to
    1080p and one 4K, 24 to 60 fps, a keyframe every 0.5 to 10 s, H.264 (B-frames), HEVC, VP9
    and AV1, 4 to 60 s, 4:3, 16:9, 21:9, square and rotated portrait. `encoders`: the codecs
    this FFmpeg can encode (default: asked of PyAV); clips of other codecs are left out.
    Ordered so that alternate clips (`[0::2]`, `[1::2]`) each hold every codec and 480p to
    1080p (the one 4K clip falls in the first): one half to fit on, the other held out."""
    with open(CLIP_TABLE, newline="") as f:
        clips = [CameraClip(int(r["width"]), int(r["height"]), float(r["fps"]), float(r["seconds"]),
                            float(r["gop_s"]), r["codec"], int(r["rotation"]))
                 for r in csv.DictReader(f)]
    if encoders is None:
        encoders = {c.codec for c in clips if can_encode(c.codec)}
    return [c for c in clips if c.codec in encoders]


def encode_rgb(container, stream, pictures) -> None:
    """Encode uint8 (H, W, 3) RGB pictures into `stream` of `container`, picture i at pts i (in
    the stream's time base, one per frame), then flush the encoder."""
    for i, rgb in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
