"""How fast a freshly initialised model learns a toy motion task: a diagnostic for training from
scratch (issue 3), where VideoMamba nano stayed at chance on the synthetic benchmark.

    python benchmarks/learnability.py                       # nano vs a small 3-D CNN, 200 steps
    python benchmarks/learnability.py --steps 400 --lr 3e-4 --set depth=4

The task: a bright square (--square px) on a dark 112 px frame moves 40 px over 8 frames in one
of 4 directions from a random start; 4 classes, fresh batches of 16 every step (no overfitting
possible). The baseline is a patchify-16 Conv3d followed by two 3x3x3 convolutions, the same
token grid VideoMamba sees. Prints training accuracy over every 20-step window for both, and
writes benchmarks/results/learnability.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import print_table, save  # noqa: E402
from model import build_model  # noqa: E402
from training.train import parse_overrides  # noqa: E402

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))
FRAMES, PIXELS, TRAVEL = 8, 112, 40


def moving_squares(n: int, size: int, gen: torch.Generator):
    """(n, 3, 8, 112, 112) clips in roughly ImageNet-normalised range, labels 0..3."""
    labels = torch.randint(0, len(DIRECTIONS), (n,), generator=gen)
    clips = torch.full((n, 3, FRAMES, PIXELS, PIXELS), -1.0)
    for i in range(n):
        dx, dy = DIRECTIONS[labels[i]]
        cx, cy = (PIXELS / 2 + (torch.rand(2, generator=gen) * 30 - 15)).tolist()
        for t in range(FRAMES):
            offset = (t / (FRAMES - 1) - 0.5) * TRAVEL
            x0, y0 = int(cx + dx * offset - size / 2), int(cy + dy * offset - size / 2)
            clips[i, :, t, max(0, y0):y0 + size, max(0, x0):x0 + size] = 1.5
    return clips, labels


def cnn_baseline():
    return nn.Sequential(nn.Conv3d(3, 32, (1, 16, 16), (1, 16, 16)), nn.GELU(),
                         nn.Conv3d(32, 64, 3, padding=1), nn.GELU(), nn.Conv3d(64, 64, 3, padding=1), nn.GELU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, len(DIRECTIONS)))


def train_curve(net, steps: int, lr: float, size: int, seed: int, window: int = 20) -> list[float]:
    """Training accuracy of each `window`-step window (every batch is new data)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    hits, curve = [], []
    for step in range(steps):
        clips, labels = moving_squares(16, size, gen)
        logits = net(clips)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        hits.append((logits.argmax(-1) == labels).float().mean().item())
        if (step + 1) % window == 0:
            curve.append(sum(hits[-window:]) / window)
            print(f"  step {step + 1}: loss {loss.item():.3f}, accuracy over the last {window} steps "
                  f"{curve[-1]:.2f}", file=sys.stderr, flush=True)
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--square", type=int, default=24, help="side of the moving square in px")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    results = {}
    for name, make in ((f"videomamba {args.preset}", lambda: build_model(args.preset, num_classes=4,
                                                                         **parse_overrides(args.set))),
                       ("3-D CNN baseline", cnn_baseline)):
        torch.manual_seed(args.seed)
        print(f"{name}:", file=sys.stderr)
        start = time.perf_counter()
        curve = train_curve(make(), args.steps, args.lr, args.square, args.seed)
        results[name] = {"curve": curve, "seconds": time.perf_counter() - start}
    windows = len(next(iter(results.values()))["curve"])
    rows = [{"steps": 20 * (i + 1), **{name: r["curve"][i] for name, r in results.items()}} for i in range(windows)]
    print_table(rows, ["steps", *results], title="training accuracy per 20-step window (4 classes: chance 0.25)")
    save("learnability.json", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
