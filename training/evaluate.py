"""Evaluate a checkpoint: top-1 at one configuration or over a grid, and the paper's two
frozen-feature protocols on the features the head reads: retrieval (each test clip takes the
label of its nearest training clip) and the linear probe (a linear classifier fitted on the
training clips' features, top-1 on the test clips).

    python -m training.evaluate --checkpoint CKPT --data MANIFEST                 # native config
    python -m training.evaluate --checkpoint CKPT --data MANIFEST --frames 16 --pixels 56 --patch 8
    python -m training.evaluate --checkpoint CKPT --data MANIFEST --grid-frames 4,8,16 --grid-pixels 56,112,224
    python -m training.evaluate --checkpoint CKPT --data MANIFEST --retrieval
    python -m training.evaluate --checkpoint CKPT --data MANIFEST --linear-probe --grid-frames 8,16

Prints one JSON object (a grid prints one object with a "results" list).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model import load_checkpoint
from model.flex import static_tokens_patch

from .data import ClipDataset, load_samples, worker_context


def _loader(samples, classes, frames, pixels, batch_size, workers, decode_mode="exact"):
    dataset = ClipDataset(samples, classes, mode="test", decode_mode=decode_mode)
    keys = [(i, frames, pixels) for i in range(len(samples))]
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      multiprocessing_context=worker_context(workers))


@torch.inference_mode()
def features_and_labels(net, samples, classes, frames, pixels, patch, batch_size=16, workers=0, logits=True):
    """Run the network over samples at one configuration: (outputs, labels)."""
    net.eval()
    device = next(net.parameters()).device
    outputs, labels = [], []
    for clips, y in _loader(samples, classes, frames, pixels, batch_size, workers):
        clips = clips.to(device)
        outputs.append((net(clips, patch=patch) if logits else net.features(clips, patch=patch)).float().cpu())
        labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def top1(net, samples, classes, frames, pixels, patch, batch_size=16, workers=0) -> float:
    logits, labels = features_and_labels(net, samples, classes, frames, pixels, patch, batch_size, workers)
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.inference_mode()
def top1_many(runs, samples, classes, batch_size: int = 16, workers: int = 1, log=None,
              decode_mode: str = "exact") -> list[float]:
    """top-1 of each run (net, frames, pixels, patch), in order; every clip is decoded once per
    (frames, pixels), in `decode_mode`, and shared by all the runs at that size (the expensive
    part on a CPU)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (_, frames, pixels, _) in enumerate(runs):
        by_size.setdefault((frames, pixels), []).append(i)
    correct = [0] * len(runs)
    for done, ((frames, pixels), members) in enumerate(by_size.items(), 1):
        for net, *_ in (runs[i] for i in members):
            net.eval()
        for clips, labels in _loader(samples, classes, frames, pixels, batch_size, workers,
                                     decode_mode):
            for i in members:
                net, _, _, patch = runs[i]
                device = next(net.parameters()).device
                correct[i] += (net(clips.to(device), patch=patch).argmax(-1).cpu() == labels).sum().item()
        if log is not None:
            log(f"[{done}/{len(by_size)}] {frames} frames x {pixels} px: "
                + ", ".join(f"p{runs[i][3]} {correct[i] / len(samples):.3f}" for i in members))
    return [c / len(samples) for c in correct]


def default_patch(cfg, pixels: int, rule: str = "static_tokens") -> int:
    """The patch a view gets when none is named: the native patch at native pixels (or always,
    with rule "native"), else the one that keeps the native token grid."""
    if pixels == cfg.img_size or rule == "native":
        return cfg.patch_size
    return static_tokens_patch(pixels, cfg.grid_size)


def _frozen_features(net, splits, classes, frames, pixels, patch, batch_size, workers):
    """(cls features, labels) of each list of samples in `splits`, at one configuration."""
    return [features_and_labels(net, samples, classes, frames, pixels, patch, batch_size, workers,
                                logits=False) for samples in splits]


def retrieval_top1(net, train, test, classes, frames, pixels, patch, batch_size=16, workers=0) -> float:
    """Nearest neighbour by cosine similarity of cls features, test -> train."""
    (f_train, y_train), (f_test, y_test) = _frozen_features(
        net, (train, test), classes, frames, pixels, patch, batch_size, workers)
    sim = F.normalize(f_test, dim=-1) @ F.normalize(f_train, dim=-1).T
    return (y_train[sim.argmax(-1)] == y_test).float().mean().item()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int,
                     weight_decay: float = 1e-4, steps: int = 200):
    """A multinomial logistic regression on frozen features (standardised with the training
    features' mean and deviation), fitted to convergence with L-BFGS; returns predict(features)
    -> class indices. Deterministic: full batch, zero initialisation."""
    x = features.double().clone()  # features from inference mode cannot enter autograd
    labels = labels.clone()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(f: torch.Tensor) -> torch.Tensor:
        return (((f.double() - mean) / std) @ weight + bias).argmax(-1)

    return predict


def linear_probe_top1(net, train, test, classes, frames, pixels, patch, batch_size=16,
                      workers=0) -> float:
    """Top-1 on `test` of a linear classifier fitted on the frozen cls features of `train`."""
    (f_train, y_train), (f_test, y_test) = _frozen_features(
        net, (train, test), classes, frames, pixels, patch, batch_size, workers)
    predict = fit_linear_probe(f_train, y_train, len(classes))
    return (predict(f_test) == y_test).float().mean().item()


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="manifest.csv, path,label CSV or class-folder tree")
    ap.add_argument("--split", default="test", help="split of a manifest to evaluate (ignored without splits)")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--pixels", type=int)
    ap.add_argument("--patch", type=int, help="default: the native patch at native pixels, else static tokens")
    ap.add_argument("--grid-frames", type=_ints)
    ap.add_argument("--grid-pixels", type=_ints)
    ap.add_argument("--patch-rule", choices=("static_tokens", "native"), default="static_tokens",
                    help="grid patch: keep the native token grid, or always the native patch")
    protocol = ap.add_mutually_exclusive_group()
    protocol.add_argument("--retrieval", action="store_true",
                          help="nearest-neighbour retrieval test -> train")
    protocol.add_argument("--linear-probe", action="store_true",
                          help="a linear classifier on the train split's frozen features")
    ap.add_argument("--train-clips", type=int,
                    help="retrieval / linear probe: only the first N training clips")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)

    net = load_checkpoint(args.checkpoint)
    cfg = net.config
    try:
        test, classes = load_samples(args.data, args.split)
    except ValueError:
        test, classes = load_samples(args.data)  # no split column: evaluate everything
    if net.labels is not None and list(net.labels) != list(classes):
        sys.exit(f"the checkpoint's labels do not match the dataset's classes ({len(net.labels)} vs {len(classes)})")

    train = (load_samples(args.data, "train")[0][:args.train_clips]
             if args.retrieval or args.linear_probe else None)

    def patch_for(pixels: int, given: int | None) -> int:
        return given if given is not None else default_patch(cfg, pixels, args.patch_rule)

    def measure(frames, pixels, patch) -> dict:
        t0 = time.perf_counter()
        if args.retrieval:
            score = {"retrieval_top1": retrieval_top1(net, train, test, classes, frames, pixels, patch,
                                                      args.batch_size, args.workers)}
        elif args.linear_probe:
            score = {"linear_probe_top1": linear_probe_top1(
                net, train, test, classes, frames, pixels, patch, args.batch_size, args.workers),
                "train_clips": len(train)}
        else:
            score = {"top1": top1(net, test, classes, frames, pixels, patch, args.batch_size, args.workers)}
        return {"frames": frames, "pixels": pixels, "patch": patch, **score, "clips": len(test),
                "seconds": round(time.perf_counter() - t0, 2)}

    if args.grid_frames or args.grid_pixels:
        results = [measure(f, p, patch_for(p, args.patch)) for f in (args.grid_frames or [cfg.num_frames])
                   for p in (args.grid_pixels or [cfg.img_size])]
        print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "results": results}))
    else:
        frames = args.frames or cfg.num_frames
        pixels = args.pixels or cfg.img_size
        print(json.dumps(measure(frames, pixels, patch_for(pixels, args.patch))))


if __name__ == "__main__":
    main()
