"""How much of the synthetic benchmark's class can be read at all from T sampled frames: a "state
oracle" that sees the actor's pose at the instants a model would see (with pixel-sized errors),
no pixels.

    python benchmarks/oracle.py                          # frames 4,8,16,32; ~4 minutes on one core
    python benchmarks/oracle.py --frames 4 --noise 3     # three times the observation errors
    python benchmarks/oracle.py --noise 0                # exact poses

Each example is one clip of the generator's distribution (video.synthetic.actor_pose: the same
draws that render_clip makes for the actor), sampled like evaluation decodes an encoded 64-frame
clip (video.sampling's segment middles). The features per sampled frame are the actor's centre
(x, y as fractions of the frame), the cosine and sine of its angle and its log length: everything
the class changes (background, distractors and colours are class-independent by construction),
plus Gaussian errors of about what a picture shows (`observe`). A small MLP is trained on
--train clips and scored on --test others. Its top-1 is a lower bound
of what the poses at those instants can tell (the MLP may not be the best classifier), and what
an image model at that frame count can hope for, which sees the poses only through pixels.
Writes benchmarks/results/oracle.json: top-1 per frame count and the most confused pairs.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import print_table, save  # noqa: E402
from video import synthetic  # noqa: E402
from video.sampling import frame_indices, sample_times  # noqa: E402

CLIP_FRAMES = len(synthetic.FULL_CLIP)  # the generator's clips, as encoded
SALT = 0x0AC1E


def shown_frames(frames: int) -> np.ndarray:
    """Which of an encoded clip's frames evaluation decodes at `frames` (segment middles)."""
    return frame_indices(sample_times(1.0, frames, "test"), CLIP_FRAMES)


def poses(n: int, seed: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64, 5) float32 per-frame pose features of clips start..start+n-1 (class = index mod the
    class count) and their labels."""
    size = synthetic.NATIVE
    feats = np.empty((n, CLIP_FRAMES, 5), np.float32)
    labels = (np.arange(start, start + n) % len(synthetic.CLASSES)).astype(np.int64)
    for j in range(n):
        rng = np.random.default_rng((SALT, seed, start + j))
        p = synthetic.actor_pose(synthetic.CLASSES[labels[j]], rng, synthetic.FULL_CLIP, size)
        feats[j] = np.stack([p["x"] / size, p["y"] / size, np.cos(p["ang"]), np.sin(p["ang"]),
                             np.log(p["length"] / size)], axis=1)
    return feats, labels


def classifier(inputs: int, classes: int, width: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, width), nn.GELU(), nn.Linear(width, classes))


def observe(feats: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """The poses as a picture shows them, roughly: Gaussian errors of `noise` x (1 px at 128 px in
    position, 5 degrees in angle, 3% in length) added to each sampled frame's features."""
    if not noise:
        return feats
    rng = np.random.default_rng((SALT, seed, 1))
    xy = rng.normal(0, noise / 128, feats[..., :2].shape)
    ang = np.arctan2(feats[..., 3], feats[..., 2]) + rng.normal(0, noise * np.deg2rad(5), feats.shape[:-1])
    logs = feats[..., 4] + rng.normal(0, noise * 0.03, feats.shape[:-1])
    return np.concatenate([feats[..., :2] + xy, np.cos(ang)[..., None], np.sin(ang)[..., None], logs[..., None]],
                          axis=-1).astype(np.float32)


def fit_and_score(x_train, y_train, x_test, y_test, epochs: int, seed: int, log=None):
    """Train the MLP (AdamW, cosine schedule, batch 512) and return (top-1, test predictions)."""
    torch.manual_seed(seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    net = classifier(x_train.shape[1], len(synthetic.CLASSES))
    steps = epochs * (len(x_train) // 512)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    for epoch in range(epochs):
        order = torch.randperm(len(x_train))
        for i in range(0, len(order) - 511, 512):
            idx = order[i:i + 512]
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if log and (epoch + 1) % 10 == 0:
            log(f"  epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
    with torch.inference_mode():
        pred = net(x_test).argmax(-1)
    return (pred == y_test).float().mean().item(), pred


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="4,8,16,32")
    ap.add_argument("--train", type=int, default=60000, help="training clips (poses only)")
    ap.add_argument("--test", type=int, default=21000)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="scale of the observation errors (see observe; 0: exact poses)")
    args = ap.parse_args(argv)
    frame_counts = [int(v) for v in args.frames.split(",")]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    train_x, train_y = poses(args.train, args.seed)
    test_x, test_y = poses(args.test, args.seed, start=args.train)
    log(f"{args.train} + {args.test} clip poses in {time.perf_counter() - t0:.0f} s")
    rows = []
    for frames in frame_counts:
        shown = shown_frames(frames)
        xs = [torch.from_numpy(observe(a[:, shown], args.noise, args.seed + i).reshape(len(a), -1))
              for i, a in enumerate((train_x, test_x))]
        t1 = time.perf_counter()
        top1, pred = fit_and_score(xs[0], torch.from_numpy(train_y), xs[1], torch.from_numpy(test_y),
                                   args.epochs, args.seed, log)
        confused = Counter((synthetic.CLASSES[t], synthetic.CLASSES[p])
                           for t, p in zip(test_y.tolist(), pred.tolist()) if t != p)
        rows.append({"frames": frames, "top1": 100 * top1, "errors": int(sum(confused.values())),
                     "seconds": round(time.perf_counter() - t1, 1),
                     "most_confused": [{"true": t, "predicted": p, "count": c} for (t, p), c in confused.most_common(8)]})
        log(f"{frames} frames: top-1 {100 * top1:.2f}% ({rows[-1]['errors']} of {args.test} wrong)")
    print_table([{**r, "most_confused": ", ".join(f"{d['true']}->{d['predicted']} {d['count']}"
                                                  for d in r["most_confused"][:3])} for r in rows],
                ["frames", "top1", "errors", "most_confused"], title="state oracle: top-1 from the actor's poses")
    save("oracle.json", {"train_clips": args.train, "test_clips": args.test, "epochs": args.epochs,
                         "noise": args.noise, "rows": rows})


if __name__ == "__main__":
    main()
