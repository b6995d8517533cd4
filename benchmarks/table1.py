"""The StretchySnake paper's Table 1 on our data: StretchySnake (static tokens) vs vanilla top-1
over frames x pixels on the synthetic test split, printed and plotted.

    python benchmarks/table1.py                 # the bundled checkpoints, data/synthetic (made if missing)
    python benchmarks/table1.py --quick         # a 2 x 2 grid on 60 test clips
    python benchmarks/table1.py --write-evaluation   # also each checkpoint's evaluation.json

StretchySnake runs each frame size with the static-tokens patch (the native token grid, what it
was trained for); vanilla with its one native patch (what a fixed-patch model does), and also
with the static-tokens patch, so neither rule is left out. Writes
benchmarks/results/table1.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import DEFAULT_DATA, RESULTS, SYNTHETIC_COMMAND, ensure_data, print_table, save  # noqa: E402
from model import load_checkpoint  # noqa: E402
from model.flex import static_tokens_patch  # noqa: E402
from training.data import load_samples  # noqa: E402
from training.evaluate import top1_many  # noqa: E402
from video import DECODE_MODES  # noqa: E402

def evaluate_grid(models: dict, samples, classes, frames_list, pixels_list, batch_size=16,
                  decode_mode="exact"):
    """top-1 (%) of every (model, patch rule) at every (frames, pixels), decoding in
    `decode_mode` (video.decode_frames)."""
    runs, rows = [], []
    for frames in frames_list:
        for pixels in pixels_list:
            for name, (net, rule) in models.items():
                patch = net.config.patch_size if rule == "native" else static_tokens_patch(pixels, net.config.grid_size)
                runs.append((net, frames, pixels, patch))
                rows.append({"model": name, "frames": frames, "pixels": pixels, "patch": patch})
    scores = top1_many(runs, samples, classes, batch_size, decode_mode=decode_mode,
                       log=lambda m: print(" ", m, file=sys.stderr))
    return [{**row, "top1": 100 * score} for row, score in zip(rows, scores)]


def evaluation_record(net, rows, rule_names, samples, data) -> dict:
    """A checkpoint's evaluation.json: its grid under each patch rule it was run with, its top-1
    at the native configuration and at the best one, and how it was trained (config.extra)."""
    cfg, extra = net.config, net.load_report.extra or {}
    grids = {rule: [{k: r[k] for k in ("frames", "pixels", "patch", "top1")} for r in rows if r["model"] == model]
             for model, rule in rule_names.items()}
    first = grids[next(iter(rule_names.values()))]
    native = [r["top1"] for r in first
              if (r["frames"], r["pixels"], r["patch"]) == (cfg.num_frames, cfg.img_size, cfg.patch_size)]
    data = Path(data).resolve()
    if data.parent == DEFAULT_DATA:
        data = f"{data.relative_to(ROOT)} (python {' '.join(SYNTHETIC_COMMAND).replace(str(ROOT) + '/', '')})"
    record = {"split": "test", "clips": len(samples), "data": str(data),
              "source": f"python benchmarks/table1.py ({time.strftime('%Y-%m-%dT%H:%M:%S')})",
              "top1_native": native[0] if native else None,
              "top1_best": max(r["top1"] for r in first),
              "grid": first}
    for rule, grid in list(grids.items())[1:]:
        record[f"grid_{rule}_patch"] = grid
    record.update(training=extra.get("command"), val_history=extra.get("history", []))
    return record


def plot(rows, frames_list, pixels_list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(frames_list), figsize=(3.6 * len(frames_list), 3.4), sharey=True, squeeze=False)
    for ax, frames in zip(axes[0], frames_list):
        for name in names:
            pts = sorted((r["pixels"], r["top1"]) for r in rows if r["model"] == name and r["frames"] == frames)
            ax.plot([p for p, _ in pts], [a for _, a in pts], marker="o", label=name)
        ax.set_title(f"{frames} frames")
        ax.set_xlabel("pixels")
        ax.set_xticks(pixels_list)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("StretchySnake vs vanilla on the synthetic test split")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "manifest.csv")
    ap.add_argument("--stretchysnake", type=Path, default=ROOT / "checkpoints" / "stretchysnake_nano")
    ap.add_argument("--vanilla", type=Path, default=ROOT / "checkpoints" / "vanilla_nano")
    ap.add_argument("--frames", default="4,8,16,32")
    ap.add_argument("--pixels", default="56,84,112,168,224")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--decode-mode", choices=DECODE_MODES, default="exact",
                    help="exact, or keyframe: each frame the keyframe nearest it in its segment "
                         "(on clips with keyframes that frequent: python -m video.synthetic "
                         "--gop 8); writes table1_keyframe.*")
    ap.add_argument("--write-evaluation", action="store_true",
                    help="write each checkpoint's evaluation.json (the bundled checkpoints' own record)")
    args = ap.parse_args()
    frames_list = [int(v) for v in args.frames.split(",")]
    pixels_list = [int(v) for v in args.pixels.split(",")]
    samples, classes = load_samples(ensure_data(args.data), "test")
    if args.quick:
        frames_list, pixels_list, samples = frames_list[:2], pixels_list[:3:2], samples[::5]
    snake, vanilla = load_checkpoint(args.stretchysnake), load_checkpoint(args.vanilla)
    models = {"StretchySnake": (snake, "static_tokens"), "vanilla": (vanilla, "native"),
              "vanilla (static-tokens patch)": (vanilla, "static_tokens")}
    rows = evaluate_grid(models, samples, classes, frames_list, pixels_list,
                         decode_mode=args.decode_mode)

    table = []
    for name in models:
        row = {"model": name}
        for r in rows:
            if r["model"] == name:
                row[f"{r['frames']}f {r['pixels']}px"] = r["top1"]
        table.append(row)
    print_table(table, list(table[0]), f"top-1 (%) on {len(samples)} test clips; columns frames x pixels")
    snake_scores = [r["top1"] for r in rows if r["model"] == "StretchySnake"]
    vanilla_scores = [r["top1"] for r in rows if r["model"] == "vanilla"]
    summary = {"stretchysnake_best": max(snake_scores), "stretchysnake_worst": min(snake_scores),
               "stretchysnake_spread": max(snake_scores) - min(snake_scores),
               "vanilla_best": max(vanilla_scores), "vanilla_worst": min(vanilla_scores),
               "vanilla_largest_drop": max(vanilla_scores) - min(vanilla_scores)}
    print_table([{"measure": k, "top1": v} for k, v in summary.items()], ["measure", "top1"])
    name = "table1" + ("" if args.decode_mode == "exact" else f"_{args.decode_mode}") \
        + ("_quick" if args.quick else "")
    save(f"{name}.json", {"frames": frames_list, "pixels": pixels_list, "test_clips": len(samples),
                          "decode_mode": args.decode_mode, "data": str(args.data),
                          "rows": rows, "summary": summary})
    plot(rows, frames_list, pixels_list, RESULTS / f"{name}.png")
    if args.write_evaluation and not args.quick and args.decode_mode == "exact":
        for net, path, rules in ((snake, args.stretchysnake, {"StretchySnake": "static_tokens"}),
                                 (vanilla, args.vanilla, {"vanilla": "native",
                                                          "vanilla (static-tokens patch)": "static_tokens"})):
            record = evaluation_record(net, rows, rules, samples, args.data)
            (path / "evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {path / 'evaluation.json'}")


if __name__ == "__main__":
    main()
