"""Top-1 with keyframe sampling against exact sampling, on the synthetic test split re-encoded
with a keyframe every --gop-s seconds (issue 30's accuracy target: within 2 points at 8 frames).

    python benchmarks/keyframe_accuracy.py --data data/synthetic/manifest.csv
    python benchmarks/keyframe_accuracy.py --data M --checkpoint CKPT --configs 8x56/8,16x112/16

Each test clip is decoded (all its frames) and written again with `video.synthetic.encode_mp4`
(same encoder settings as the dataset, plus the GOP) under --cache; both decode modes then read
the same re-encoded files. Prints top-1 per configuration and mode, and how many of the frames
keyframe mode took from keyframes; writes keyframe_accuracy.json under --out-dir
(benchmarks/results).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS, print_table, save  # noqa: E402
from model import load_checkpoint  # noqa: E402
from training.data import load_samples  # noqa: E402
from training.variants import parse_configs  # noqa: E402
from video import DecodeStats, decode_frames, preprocess, probe  # noqa: E402
from video.synthetic import encode_mp4  # noqa: E402

MODES = ("exact", "keyframe")


def _configs(text: str):
    try:
        return parse_configs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def reencode(src: str, dst: Path, gop_s: float) -> Path:
    """`src` written again with a keyframe every gop_s seconds (cached at dst)."""
    if dst.exists():
        return dst
    info = probe(src)
    with av.open(src) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    fps = round(info.fps)
    part = dst.with_suffix(".part.mp4")
    encode_mp4(frames, str(part), fps=fps, gop=max(1, round(gop_s * fps)))
    return part.rename(dst)


@torch.no_grad()  # not inference_mode: the flexed-weight cache reads tensor versions
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "stretchysnake_nano"))
    ap.add_argument("--configs", type=_configs,
                    default=_configs("8x56/8,8x56/16,8x56/28,8x112/16"))
    ap.add_argument("--gop-s", type=float, default=0.5)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="only the first N clips (a check)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/stretchysnake-gop-clips"))
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    net = load_checkpoint(args.checkpoint, map_location="cpu").eval()
    samples, classes = load_samples(args.data, split=args.split)
    samples = samples[:args.limit]
    cache = args.cache / f"gop{args.gop_s:g}s"
    cache.mkdir(parents=True, exist_ok=True)
    correct = {(c, m): 0 for c in args.configs for m in MODES}
    sizes = sorted({(c.frames, c.pixels) for c in args.configs})
    from_keyframes = dict.fromkeys(sizes, 0)   # frames taken from keyframes, keyframe mode
    t0 = time.perf_counter()
    for n, sample in enumerate(samples, 1):
        path = reencode(sample.path, cache / (Path(sample.path).stem + ".mp4"), args.gop_s)
        label = classes.index(sample.label)
        for frames, pixels in sizes:
            for mode in MODES:
                stats = DecodeStats()
                raw = decode_frames(path, frames, short_side=pixels, stats=stats,
                                    decode_mode=mode)
                if mode == "keyframe":
                    from_keyframes[(frames, pixels)] += stats.keyframes_used
                clip = preprocess(raw, pixels)[None]
                for config in args.configs:
                    if (config.frames, config.pixels) == (frames, pixels):
                        logits = net(clip, patch=config.patch)
                        correct[(config, mode)] += int(logits.argmax(-1).item() == label)
        if n % 50 == 0 or n == len(samples):
            print(f"{n}/{len(samples)} clips, {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for c in args.configs:
        acc = {m: correct[(c, m)] / len(samples) for m in MODES}
        rows.append({"config": f"{c.frames}x{c.pixels}/{c.patch}", "top1": acc,
                     "diff_points": 100 * (acc["keyframe"] - acc["exact"])})
    print_table([{"config": r["config"], "exact %": 100 * r["top1"]["exact"],
                  "keyframe %": 100 * r["top1"]["keyframe"], "diff": f"{r['diff_points']:+.1f}"}
                 for r in rows], ["config", "exact %", "keyframe %", "diff"],
                title=f"top-1 on {len(samples)} {args.split} clips re-encoded with a keyframe "
                      f"every {args.gop_s:g} s ({Path(args.checkpoint).name})")
    shares = {f"{f}x{p}": n / (f * len(samples)) for (f, p), n in from_keyframes.items()}
    print("frames taken from keyframes in keyframe mode: " + ", ".join(
        f"{100 * v:.0f}% at {k}" for k, v in shares.items()))
    save("keyframe_accuracy.json", {
        "checkpoint": args.checkpoint, "clips": len(samples), "split": args.split,
        "gop_s": args.gop_s, "rows": rows, "keyframe_share": shares}, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
