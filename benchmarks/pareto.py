"""Accuracy vs compute: top-1 of every profiled (frames, pixels, patch) configuration, joined with
its GFLOPs and measured latency, with the Pareto-optimal configurations marked.

    python benchmarks/pareto.py            # bundled checkpoints, synthetic test split, this device's profile
    python benchmarks/pareto.py --quick    # 4 configurations on every 5th test clip (CI); profile untouched
    python benchmarks/pareto.py --checkpoint mine=runs/x --checkpoint vanilla=runs/y \\
        --data path/to/manifest.csv --profile profiles/NAME.json
    python benchmarks/pareto.py --decode-mode keyframe --data data/synthetic_gop8/manifest.csv \\
        --checkpoint StretchySnake=checkpoints/stretchysnake_nano

--decode-mode keyframe decodes each frame as the keyframe nearest it in its segment
(video.decode_frames); it measures something only on clips with a keyframe in every segment
(`python -m video.synthetic --gop 8` writes one every 0.5 s). Its top-1 is merged as the
configurations' accuracy_by_decode.keyframe, for the frame counts where every clip has a
keyframe in every segment (the others decode exactly there); outputs are pareto_keyframe.*.

The configurations are the profile table's (`python -m serving.profile` writes it; without one,
the profiler's default grid with no latency). The first checkpoint is the one the server runs:
its accuracy is merged into the profile table (`--no-merge` to leave it alone), which is what
the budget selector ranks by. Writes benchmarks/results/pareto.{json,csv,png} (`*_quick.*`
with --quick) and prints the table and the efficiency check of issue 4: a configuration with
>= 90% fewer GFLOPs than the native one that is >= 3x faster and within 5 points of the best.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import DEFAULT_DATA, RESULTS, ensure_data, machine, print_table, save  # noqa: E402
from model import count_flops, load_checkpoint  # noqa: E402
from model.flops import tokens as count_tokens  # noqa: E402
from serving.decode_cost import keyframe_mode_applies, video_meta  # noqa: E402
from serving.devices import default_profile_path  # noqa: E402
from serving.profile import make_grid, write_table  # noqa: E402
from serving.selector import ProfileTable  # noqa: E402
from training.data import load_samples  # noqa: E402
from training.evaluate import top1_many  # noqa: E402
from video import DECODE_MODES, probe  # noqa: E402

DEFAULT_CHECKPOINTS = (f"StretchySnake={ROOT / 'checkpoints' / 'stretchysnake_nano'}",
                       f"vanilla={ROOT / 'checkpoints' / 'vanilla_nano'}")
FLOPS_CUT, SPEEDUP, POINTS = 0.90, 3.0, 0.05  # the efficiency claim: -90% GFLOPs, 3x faster, -5 points


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """(cost, accuracy) -> on the frontier: no other point is at most as costly and at least as
    accurate with one of the two strict. Equal points are both kept."""
    return [not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in points) for c, a in points]


def efficiency_check(rows: list[dict], native: tuple[int, int, int]) -> dict:
    """The most accurate row (ties: fewer GFLOPs) with >= 90% fewer GFLOPs than `native`, >= 3x
    faster (p50) and within 5 points of the best top-1; None where no row qualifies (or latency
    is unknown)."""
    best = max(r["top1"] for r in rows)
    base = next((r for r in rows if (r["frames"], r["pixels"], r["patch"]) == native), None)
    out = {"native": dict(zip(("frames", "pixels", "patch"), native)), "best_top1": best, "found": None}
    if base is None or base["latency_p50_ms"] is None:
        out["why_not"] = "the native configuration has no measured latency in the profile"
        return out
    fits = [r for r in rows if r["gflops"] <= (1 - FLOPS_CUT) * base["gflops"]
            and r["latency_p50_ms"] is not None and r["latency_p50_ms"] * SPEEDUP <= base["latency_p50_ms"]
            and r["top1"] >= best - POINTS]
    if fits:
        hit = max(fits, key=lambda r: (r["top1"], -r["gflops"]))
        out["found"] = {**{k: hit[k] for k in ("frames", "pixels", "patch", "gflops", "top1")},
                        "gflops_saved": 1 - hit["gflops"] / base["gflops"],
                        "speedup": base["latency_p50_ms"] / hit["latency_p50_ms"],
                        "points_below_best": 100 * (best - hit["top1"])}
    else:
        out["why_not"] = "no configuration is that much cheaper, faster and accurate enough"
    return out


def plot(rows: list[dict], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = sorted((r for r in rows if r["checkpoint"] == name), key=lambda r: r["gflops"])
        dots = ax.scatter([r["gflops"] for r in mine], [100 * r["top1"] for r in mine], s=18, alpha=0.5)
        front = [r for r in mine if r["pareto"]]
        ax.plot([r["gflops"] for r in front], [100 * r["top1"] for r in front], marker="o",
                color=dots.get_facecolor()[0][:3], label=f"{name} (frontier)")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per clip (log)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", metavar="NAME=PATH",
                    help="repeatable; the first is the served one (default: the bundled pair)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--profile", type=Path, help="profile table (default: this device's, profiles/<device>.json)")
    ap.add_argument("--no-merge", action="store_true", help="do not write accuracy into the profile table")
    ap.add_argument("--clips", type=int, help="evaluate only the first N clips of the split")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--decode-mode", choices=DECODE_MODES, default="exact",
                    help="how frames are decoded (video.decode_frames); see above")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoints = {}
    for item in args.checkpoint or DEFAULT_CHECKPOINTS:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--checkpoint takes NAME=PATH, got {item!r}")
        if not Path(path).exists():
            sys.exit(f"checkpoint {name}: {path} not found (train it first: see docs/training.md)")
        checkpoints[name] = (path, load_checkpoint(path))
    served_path, served = next(iter(checkpoints.values()))
    cfg = served.config
    samples, classes = load_samples(ensure_data(args.data), args.split)
    for name, (_, net) in checkpoints.items():
        if net.labels is not None and list(net.labels) != list(classes):
            sys.exit(f"checkpoint {name}: its labels are not the dataset's classes")
    profile_path = args.profile or default_profile_path()
    if profile_path.exists():
        table = ProfileTable.load(profile_path).to_dict()
        configs = [(c["frames"], c["pixels"], c["patch"]) for c in table["configs"]]
        latency = {(c["frames"], c["pixels"], c["patch"]): c["latency_ms"] for c in table["configs"]}
    else:
        print(f"no profile at {profile_path}: the profiler's default grid, without latency "
              f"(python -m serving.profile --checkpoint {served_path} makes one)", file=sys.stderr)
        table, latency = None, {}
        configs = make_grid(cfg)[0]
    if args.quick:  # the cheapest, the native and the two dearest: the ends of the curve
        native = (cfg.num_frames, cfg.img_size, cfg.patch_size)
        by_cost = sorted(configs, key=lambda k: count_flops(cfg, *k))
        configs = list(dict.fromkeys([by_cost[0], *([native] if native in configs else []), *by_cost[-2:]]))
        samples = samples[::5]
    if args.clips:
        samples = samples[:args.clips]

    runs = [(net, *key) for _, net in checkpoints.values() for key in configs]
    print(f"top-1 of {len(checkpoints)} checkpoint(s) x {len(configs)} configurations on "
          f"{len(samples)} {args.split} clips", file=sys.stderr)
    scores = top1_many(runs, samples, classes, args.batch_size, decode_mode=args.decode_mode,
                       log=lambda m: print(" ", m, file=sys.stderr))
    rows = []
    for (name, (_, net)), start in zip(checkpoints.items(), range(0, len(runs), len(configs))):
        mine = []
        for key, score in zip(configs, scores[start:start + len(configs)]):
            lat = latency.get(key)
            mine.append({"checkpoint": name, "frames": key[0], "pixels": key[1], "patch": key[2],
                         "tokens": count_tokens(net.config, *key), "gflops": count_flops(net.config, *key),
                         "latency_p50_ms": lat["p50"] if lat else None,
                         "latency_p95_ms": lat["p95"] if lat else None, "top1": score})
        for row, flag in zip(mine, pareto_flags([(r["gflops"], r["top1"]) for r in mine])):
            row["pareto"] = flag
        rows.extend(mine)

    served_name = next(iter(checkpoints))
    check = efficiency_check([r for r in rows if r["checkpoint"] == served_name],
                             (cfg.num_frames, cfg.img_size, cfg.patch_size))
    print_table(sorted(rows, key=lambda r: (r["checkpoint"], r["gflops"])),
                ["checkpoint", "frames", "pixels", "patch", "tokens", "gflops", "latency_p50_ms", "top1", "pareto"],
                title=f"accuracy vs compute ({len(samples)} {args.split} clips)")
    found = check["found"]
    print(f"\nefficiency check ({served_name}): " + (
        f"{found['frames']}f {found['pixels']}px p{found['patch']}: {100 * found['gflops_saved']:.0f}% fewer "
        f"GFLOPs, {found['speedup']:.1f}x faster, {found['points_below_best']:.1f} points below the best"
        if found else check["why_not"]))

    stem = "pareto" + ("" if args.decode_mode == "exact" else f"_{args.decode_mode}") \
        + ("_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "data": str(args.data), "split": args.split, "clips": len(samples),
               "decode_mode": args.decode_mode,
               "profile": str(profile_path) if table else None,
               "checkpoints": {n: p for n, (p, _) in checkpoints.items()}, "efficiency_check": check, "rows": rows}
    if args.out_dir == RESULTS:
        save(f"{stem}.json", payload)
    else:
        (args.out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    with open(args.out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out_dir / f"{stem}.png", f"{len(samples)} {args.split} clips of {args.data.parent.name}; "
         f"profile: {profile_path.name if table else 'none'}")
    print(f"wrote {args.out_dir / stem}.{{json,csv,png}}", file=sys.stderr)

    if table is not None and not args.no_merge and not args.quick:
        merge_accuracy(table, rows, served_name, samples, args.decode_mode)
        provenance = {"checkpoint": served_path, "data": str(args.data), "split": args.split,
                      "clips": len(samples), "command": payload["machine"]["command"],
                      "date": payload["machine"]["date"]}
        if args.decode_mode == "exact":
            table["meta"]["accuracy"] = provenance
        else:
            table["meta"].setdefault("accuracy_by_decode", {})[args.decode_mode] = provenance
        ProfileTable.from_dict(table)
        write_table(table, profile_path)
        print(f"merged {served_name}'s top-1 ({args.decode_mode} decoding) into {profile_path}",
              file=sys.stderr)
    return payload


def merge_accuracy(table: dict, rows: list[dict], checkpoint: str, samples,
                   decode_mode: str) -> None:
    """Write the checkpoint's top-1 into the table's configurations: as `accuracy` (exact
    decoding), or as accuracy_by_decode[mode] for the frame counts at which every clip has a
    keyframe in every segment (elsewhere the mode decoded exactly: nothing of its own to say)."""
    accuracy = {(r["frames"], r["pixels"], r["patch"]): r["top1"] for r in rows
                if r["checkpoint"] == checkpoint}
    metas = [video_meta(probe(s.path)) for s in samples] if decode_mode != "exact" else []
    skipped = set()
    for c in table["configs"]:
        key = (c["frames"], c["pixels"], c["patch"])
        if decode_mode == "exact":
            c["accuracy"] = accuracy[key]
        elif all(keyframe_mode_applies(m, c["frames"]) for m in metas):
            c.setdefault("accuracy_by_decode", {})[decode_mode] = accuracy[key]
        else:
            skipped.add(c["frames"])
    if skipped:
        print(f"not merged at {sorted(skipped)} frames: some clips have a segment without a "
              f"keyframe there", file=sys.stderr)


if __name__ == "__main__":
    main()
