"""Decode modes on phone-like videos: exact segment sampling against keyframe sampling.

    python benchmarks/decode_modes.py                       # 1080p30, 1 s GOP, 10/20/30 s
    python benchmarks/decode_modes.py --seconds 10 --repeats 3 --frames 8,16

Writes camera-like clips (`video.camera`: H.264 with B-frames, a keyframe every --gop-s
seconds) once under --cache, then decodes --frames frames of each at --short-side, both modes
interleaved, --repeats times, one process, one file at a time (as a decoding process of the
server does). Prints the median milliseconds per mode, the speed-up, the pictures decoded and
the keyframes' share of the bits (decoding a picture costs about its bits, so heavy keyframes
bound the speed-up); writes decode_modes.json under --out-dir (benchmarks/results). The machine
is shared and noisy: compare the two modes of one run, not runs of different days.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, camera_clip, print_table, save  # noqa: E402
import av  # noqa: E402

from video import DecodeStats, decode_frames, probe  # noqa: E402

MODES = ("exact", "keyframe")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def keyframe_bytes(path: Path) -> tuple[float, float]:
    """(share of the stream's bytes in keyframes, mean keyframe size / mean frame size): what
    bounds the speed-up, since decoding a picture costs about its bits."""
    sizes, keys = [], []
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                sizes.append(packet.size)
                keys.append(packet.is_keyframe)
    key_bytes = sum(s for s, k in zip(sizes, keys) if k)
    share = key_bytes / sum(sizes)
    return share, (key_bytes / max(1, sum(keys))) / (sum(sizes) / len(sizes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=_floats, default=[10.0, 20.0, 30.0])
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--gop-s", type=float, default=1.0)
    ap.add_argument("--frames", type=_ints, default=[8])
    ap.add_argument("--short-side", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/stretchysnake-camera-clips"))
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.cache.mkdir(parents=True, exist_ok=True)

    rows = []
    for seconds in args.seconds:
        path = camera_clip(args.cache, width, height, args.fps, args.gop_s, seconds)
        info = probe(path)
        key_share, key_ratio = keyframe_bytes(path)
        for frames in args.frames:
            times = {m: [] for m in MODES}
            decoded = {}
            for r in range(args.repeats):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    stats = DecodeStats()
                    t0 = time.perf_counter()
                    decode_frames(path, frames, short_side=args.short_side, info=info,
                                  stats=stats, decode_mode=mode)
                    times[mode].append((time.perf_counter() - t0) * 1e3)
                    decoded[mode] = (stats.frames_decoded, stats.keyframes_used)
            med = {m: statistics.median(v) for m, v in times.items()}
            row = {"file": path.name, "seconds": seconds, "width": width, "height": height,
                   "fps": args.fps, "gop_s": args.gop_s, "frames": frames,
                   "bytes": path.stat().st_size,
                   "mbit_s": path.stat().st_size * 8 / seconds / 1e6,
                   "keyframe_bytes_share": key_share, "keyframe_vs_mean_frame": key_ratio,
                   "median_ms": med, "runs_ms": times,
                   "pictures_decoded": {m: decoded[m][0] for m in MODES},
                   "keyframes_used": decoded["keyframe"][1],
                   "speedup": med["exact"] / med["keyframe"]}
            rows.append(row)
            print(f"{seconds:>5g} s  {row['mbit_s']:.1f} Mbit/s  {frames:>3} frames  "
                  f"exact {med['exact']:7.1f} ms ({decoded['exact'][0]} pictures)  "
                  f"keyframe {med['keyframe']:7.1f} ms ({decoded['keyframe'][0]} pictures)  "
                  f"{row['speedup']:.1f}x", flush=True)

    print_table([{"clip": f"{r['seconds']:g} s", "Mbit/s": r["mbit_s"],
                  "key bits": f"{r['keyframe_bytes_share']:.0%}",
                  "key/mean": f"{r['keyframe_vs_mean_frame']:.1f}x", "frames": r["frames"],
                  "exact ms": r["median_ms"]["exact"], "keyframe ms": r["median_ms"]["keyframe"],
                  "speed-up": f"{r['speedup']:.1f}x"} for r in rows],
                ["clip", "Mbit/s", "key bits", "key/mean", "frames", "exact ms", "keyframe ms", "speed-up"],
                title=f"decode modes, {width}x{height} {args.fps:g} fps H.264 (B-frames), "
                      f"keyframe every {args.gop_s:g} s, to {args.short_side} px; median of "
                      f"{args.repeats}")
    save("decode_modes.json", {"rows": rows}, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
