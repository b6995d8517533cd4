"""Whole-network forward on the CPU against this machine's floor, measured in the same run:

    floor = matmul multiply-adds / measured GEMM rate + scan exps / measured exp rate

(GEMM rate: a large square fp32 matmul on all threads; exp rate: torch.exp on a cache-sized
tensor on all threads.) Also checks that a second call at an already-seen configuration does no
resampling work (the flexed weights come from the cache).

    python benchmarks/forward.py           # tiny @ 8 x 224 px (the target) and a few flexed configs
    python benchmarks/forward.py --quick   # nano only, seconds

Writes benchmarks/results/forward.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import exp_rate, gemm_rate, print_table, save, timeit  # noqa: E402
from model import build_model, count_flops  # noqa: E402
from model.flops import count_macs, scan_exps, tokens  # noqa: E402
from model.scan import pick_backend  # noqa: E402

CONFIGS = {  # preset -> [(frames, pixels, patch)]
    "tiny": [(8, 224, 16), (8, 112, 8), (16, 224, 32), (8, 160, 16)],
    "nano": [(8, 112, 16), (16, 112, 8), (8, 56, 8)],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="nano configurations only")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    presets = {"nano": CONFIGS["nano"]} if args.quick else CONFIGS

    gemm = gemm_rate()
    exps_per_s = exp_rate()
    print(f"{torch.get_num_threads()} threads: GEMM {gemm / 1e9:.0f} G multiply-adds/s, exp {exps_per_s / 1e9:.2f} G/s")

    rows = []
    for preset, configs in presets.items():
        net = build_model(preset).eval()
        for frames, pixels, patch in configs:
            video = torch.randn(args.batch, 3, frames, pixels, pixels)
            macs = count_macs(net.config, frames, pixels, patch, batch=args.batch)
            floor_s = macs["matmul"] / gemm + scan_exps(net.config, frames, pixels, patch, batch=args.batch) / exps_per_s
            with torch.inference_mode():
                before = net.flex_computations
                t0 = time.perf_counter()
                net(video, patch=patch)
                first_ms = (time.perf_counter() - t0) * 1e3
                stats = timeit(lambda: net(video, patch=patch), args.repeats, warmup=1)
                resamplings_after_first = net.flex_computations - before - 1
            rows.append({
                "preset": preset, "frames": frames, "pixels": pixels, "patch": patch,
                "tokens": tokens(net.config, frames, pixels, patch), "gflops": count_flops(net.config, frames, pixels, patch),
                "first_ms": first_ms, "median_ms": stats["median_ms"], "min_ms": stats["min_ms"],
                "floor_ms": floor_s * 1e3, "x_floor": stats["median_ms"] / (floor_s * 1e3),
                "resamplings_after_first": resamplings_after_first,
            })
    print(f"\nbatch {args.batch}, fp32, scan backend: {pick_backend(torch.empty(1))}; GFLOPs in fvcore's convention (multiply-add = 1)")
    print_table(rows, ["preset", "frames", "pixels", "patch", "tokens", "gflops", "first_ms", "median_ms", "min_ms",
                       "floor_ms", "x_floor", "resamplings_after_first"])
    save("forward_quick.json" if args.quick else "forward.json",
         {"gemm_macs_per_s": gemm, "exp_per_s": exps_per_s, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
