"""Average the weights of checkpoints of one network (a "model soup", as timm's avg_checkpoints.py):
the epochs of one fine-tune sit in one basin, and their mean is often better than any of them.

    python -m training.average runs/ss_ft9_epochs/e14 runs/ss_ft9_epochs/e15 runs/ss_ft9_epochs/e16 --out runs/ss_avg

Every checkpoint must have the same configuration and labels; the output is our checkpoint
directory with the sources listed in config.json's "extra".
"""
from __future__ import annotations

import argparse
import sys

import torch

from model import CheckpointError, load_checkpoint, save_checkpoint


def average_checkpoints(paths) -> torch.nn.Module:
    """One network whose floating-point tensors are the mean of the checkpoints' (integer buffers
    must agree); raises ValueError when configurations, labels or integer buffers differ."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    nets = [load_checkpoint(p) for p in paths]
    first = nets[0]
    states = [net.state_dict() for net in nets]
    for path, net in zip(paths[1:], nets[1:]):
        if net.config != first.config:
            ours, theirs = first.config.to_dict(), net.config.to_dict()
            differ = sorted(k for k, v in ours.items() if theirs.get(k) != v)
            raise ValueError(f"{path}: configuration differs from {paths[0]} in {differ}")
        if list(net.labels or []) != list(first.labels or []):
            raise ValueError(f"{path}: labels differ from {paths[0]}")
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            # accumulate in float64 so the mean does not depend on the order of the checkpoints
            mean[key] = (sum(s[key].double() for s in states) / len(states)).to(value.dtype)
        else:
            if any(not torch.equal(s[key], value) for s in states[1:]):
                raise ValueError(f"integer tensor {key!r} differs between checkpoints; cannot average it")
            mean[key] = value
    first.load_state_dict(mean)
    return first


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.average", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="our checkpoint directories (same configuration and labels)")
    ap.add_argument("--out", required=True, help="directory for the averaged checkpoint")
    args = ap.parse_args(argv)
    try:
        net = average_checkpoints(args.checkpoints)
    except (ValueError, CheckpointError) as exc:
        sys.exit(f"training.average: {exc}")
    out = save_checkpoint(net, args.out, labels=net.labels, extra={"averaged_from": args.checkpoints})
    print(f"averaged {len(args.checkpoints)} checkpoint(s) into {out}")


if __name__ == "__main__":
    main()
