"""Choose among checkpoints (e.g. a fine-tune's per-epoch copies) on held-out clips, never the test split.

    python -m training.select runs/ss_ft11_epochs/e* --data data/synthetic/manifest.csv:val \\
        --data data/selection/manifest.csv --rank 4x56,4x112,4x224 --show 8x56/28,8x112

Every `--data` is a dataset `load_samples` reads, optionally `:SPLIT`; their clips are pooled under
the first one's class list. Each checkpoint's top-1 is measured at every view (FRAMESxPIXELS, with
`/PATCH` or else the static-tokens patch), and checkpoints are ranked by the mean over the
`--rank` views; `--show` views are printed but do not rank. Prints a table, then one JSON line.
With validation splits of ~300 clips a top-1 moves by about a point between neighbouring epochs
by chance alone, so pool a second held-out set (e.g. `python -m video.synthetic --seed 1`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model import load_checkpoint

from .data import load_samples
from .evaluate import default_patch, top1_many


def parse_view(text: str) -> tuple[int, int, int | None]:
    """'4x112' -> (4, 112, None): the static-tokens patch; '8x56/28' -> (8, 56, 28)."""
    size, _, patch = text.strip().partition("/")
    try:
        frames, pixels = (int(v) for v in size.lower().split("x"))
        return frames, pixels, int(patch) if patch else None
    except ValueError:
        raise ValueError(f"bad view {text!r}: want FRAMESxPIXELS or FRAMESxPIXELS/PATCH, e.g. 4x112 or 8x56/28") from None


def load_pooled(specs: list[str]):
    """Samples of every `PATH[:SPLIT]` pooled, and their shared class list."""
    pooled, classes = [], None
    for spec in specs:
        path, split = spec, None
        head, sep, tail = spec.rpartition(":")
        if sep and Path(head).exists() and not Path(spec).exists():
            path, split = head, tail
        if split == "test":
            raise ValueError(f"{spec}: choosing on the test split would make its score meaningless; "
                             "use a validation split or a held-out set of its own")
        samples, names = load_samples(path, split)
        classes = classes or names  # the first dataset's class list fixes the label indices
        unknown = sorted({s.label for s in samples} - set(classes))
        if unknown:
            raise ValueError(f"{spec}: labels not among {specs[0]}'s classes: {unknown[:10]}")
        pooled += samples
    return pooled, classes


def score(checkpoints, samples, classes, views, batch_size=16, workers=0, log=None) -> list[dict]:
    """{"checkpoint", "top1": {view: top-1}} per checkpoint, every clip decoded once per view size."""
    nets = [load_checkpoint(c) for c in checkpoints]
    for path, net in zip(checkpoints, nets):
        if net.labels is not None and list(net.labels) != list(classes):
            raise ValueError(f"{path}: the checkpoint's labels differ from the data's classes")
    runs, keys = [], []
    for path, net in zip(checkpoints, nets):
        for view in views:
            frames, pixels, patch = parse_view(view)
            runs.append((net, frames, pixels, default_patch(net.config, pixels) if patch is None else patch))
            keys.append((str(path), view))
    results = {str(c): {"checkpoint": str(c), "top1": {}} for c in checkpoints}
    for (path, view), value in zip(keys, top1_many(runs, samples, classes, batch_size, workers, log)):
        results[path]["top1"][view] = value
    return list(results.values())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.select", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", action="append", required=True, metavar="PATH[:SPLIT]")
    ap.add_argument("--rank", required=True, help="views whose mean top-1 ranks the checkpoints, e.g. 4x56,4x112")
    ap.add_argument("--show", default="", help="views to print beside them, e.g. 8x56/28,8x112")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    rank_views = [v.strip() for v in args.rank.split(",") if v.strip()]
    show_views = [v.strip() for v in args.show.split(",") if v.strip() and v.strip() not in rank_views]
    views = rank_views + show_views
    try:
        for view in views:
            parse_view(view)  # a typo fails before any clip is decoded
        samples, classes = load_pooled(args.data)
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        log(f"{len(args.checkpoints)} checkpoint(s) on {len(samples)} clips at {len(views)} views")
        results = score(args.checkpoints, samples, classes, views, args.batch_size, args.workers, log)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"training.select: {err}")
    for r in results:
        r["rank_mean"] = sum(r["top1"][v] for v in rank_views) / len(rank_views)
    best = max(results, key=lambda r: r["rank_mean"])  # the first of equals: the earlier checkpoint
    width = max(len(r["checkpoint"]) for r in results)
    print(f"{'checkpoint':<{width}}  {'mean':>6}  " + "  ".join(f"{v:>8}" for v in views))
    for r in results:
        mark = "  <- best" if r is best else ""
        print(f"{r['checkpoint']:<{width}}  {100 * r['rank_mean']:6.2f}  "
              + "  ".join(f"{100 * r['top1'][v]:8.2f}" for v in views) + mark)
    print(json.dumps({"clips": len(samples), "rank": rank_views, "best": best["checkpoint"], "results": results}))
    return results


if __name__ == "__main__":
    main()
