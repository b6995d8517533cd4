"""Do a profile table's latencies hold? Re-measures every configuration of a table on this device
and compares the fresh p50 with the table's (issue 4's target: within 15% for every one). Like
the profiler, it times all configurations in interleaved rounds, so drift hits them alike.

    python benchmarks/profile_check.py                          # this device's table, profiles/<device>.json
    python benchmarks/profile_check.py --profile profiles/NAME.json --checkpoint CKPT --min-seconds 1

It times the model the table timed: --checkpoint, else the table's meta.checkpoint where that
still exists, else a fresh model built from meta.model (latency does not depend on the weights,
so this is the same network). Writes benchmarks/results/profile_check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, print_table, save  # noqa: E402
from model import VideoMambaConfig, build_model, load_checkpoint  # noqa: E402
from serving.devices import default_profile_path, resolve_device  # noqa: E402
from serving.latency import measure_interleaved  # noqa: E402
from serving.selector import ProfileTable  # noqa: E402

TOLERANCE = 0.15


def model_to_time(meta: dict, checkpoint=None):
    """(network, where it came from): the checkpoint given, else the one the table was measured on
    (meta.checkpoint, relative to the working directory or the repository), else meta.model."""
    if checkpoint:
        return load_checkpoint(checkpoint), str(checkpoint)
    recorded = meta.get("checkpoint")
    if recorded:
        for candidate in (Path(recorded), ROOT / recorded):
            if candidate.exists():
                return load_checkpoint(candidate), str(candidate)
    if "model" in meta:
        return build_model(VideoMambaConfig.from_dict(meta["model"])), "a fresh model from meta.model"
    sys.exit("the table's checkpoint is gone and it has no meta.model: pass --checkpoint")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--checkpoint", help="model to time (default: the table's meta.checkpoint, else a "
                                         "fresh one from its meta.model)")
    ap.add_argument("--device")
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    path = args.profile or default_profile_path(args.device)
    if not path.exists():
        sys.exit(f"no profile at {path}: python -m serving.profile --checkpoint CKPT --out {path}")
    table = ProfileTable.load(path)
    raw = json.loads(path.read_text())
    net, source = model_to_time(raw["meta"], args.checkpoint)
    print(f"model: {source}", file=sys.stderr)
    threads = raw["meta"].get("threads")
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)  # compare like with like
    device = resolve_device(args.device)
    net = net.to(device).eval()
    print(f"timing {len(table.configs)} configurations, interleaved ...", file=sys.stderr)
    measured = measure_interleaved(net, [c.key for c in table.configs], 1, device, warmup=3,
                                   min_runs=args.min_runs, min_seconds=args.min_seconds)
    rows = []
    for c, fresh in zip(table.configs, measured):
        p50 = fresh["latency_ms"]["p50"]
        error = p50 / c.p50_ms - 1
        rows.append({"frames": c.frames, "pixels": c.pixels, "patch": c.patch, "table_p50_ms": c.p50_ms,
                     "fresh_p50_ms": p50, "error_pct": 100 * error, "within": abs(error) <= TOLERANCE})
        print(f"  {c.frames}f {c.pixels}px p{c.patch}: table {c.p50_ms:.2f} ms, fresh {p50:.2f} ms "
              f"({100 * error:+.1f}%)", file=sys.stderr)
    print_table(rows, list(rows[0]), title=f"fresh p50 vs {path.name} (target: every one within "
                                           f"{100 * TOLERANCE:.0f}%)")
    held = sum(r["within"] for r in rows)
    worst = max(rows, key=lambda r: abs(r["error_pct"]))
    print(f"\n{held}/{len(rows)} within {100 * TOLERANCE:.0f}%; worst {worst['error_pct']:+.1f}% at "
          f"{worst['frames']}f {worst['pixels']}px p{worst['patch']}")
    save("profile_check.json", {"machine": machine(), "profile": str(path), "model": source,
                                "tolerance": TOLERANCE, "held": held, "configs": len(rows), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
