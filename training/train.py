"""Train a (flexible) VideoMamba on a video dataset.

    python -m training.train --flex static_tokens --data DIR/manifest.csv --preset nano --out CKPT
    python -m training.train ... --resume            # continue from CKPT's last epoch
    python -m training.train ... --stop-after 5      # pause after epoch 5 (--resume goes on exactly)
    torchrun --nproc_per_node 2 -m training.train ...  # data-parallel (gloo on CPU, nccl on GPU)

--flex: none (vanilla, native configuration only) | temporal | static_patch | static_tokens
(StretchySnake) | flexivit | flex_all, the paper's variants (training/variants.py). AdamW with
linear warm-up and cosine decay, label smoothing, bf16 autocast where the device has it; the
checkpoint directory is rewritten after every epoch (model.safetensors + config.json +
labels.json, and train_state.pt for --resume). --distill-from adds self-distillation from a
richer view of each clip (training/distill.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.progress import Progress
from model import build_model, load_checkpoint, save_checkpoint

from .data import ClipDataset, RenderedClips, load_samples, worker_context
from .distill import Teacher
from .evaluate import top1
from .variants import VARIANTS, Config, ConfigSampler, parse_configs

STATE_FILE = "train_state.pt"
NO_DECAY = ("pos_embed", "cls_token", "temporal_pos_embedding", "A_log", "A_b_log", "D", "D_b")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flex", choices=VARIANTS, default="static_tokens")
    ap.add_argument("--data", required=True, help="manifest.csv (train/val splits), path,label CSV or class folders")
    ap.add_argument("--out", required=True, help="checkpoint directory (written every epoch)")
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a model config field, e.g. --set depth=4 (repeatable)")
    ap.add_argument("--init", help="start from this checkpoint (ours or a public VideoMamba .pth) with a new head; a "
                         "checkpoint of ours already trained on the same classes keeps its head")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-5)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--clip-grad", type=float, default=1.0)
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], help="frame sizes (default: scaled paper set)")
    ap.add_argument("--frames", type=lambda s: [int(v) for v in s.split(",")], help="frame counts (default: scaled paper set)")
    ap.add_argument("--also", type=_configs, default=[], metavar="FxP/PATCH,...",
                    help="extra configurations mixed into training, e.g. 8x56/28,4x56/16 (see --also-fraction)")
    ap.add_argument("--also-fraction", type=float, default=0.0,
                    help="fraction of batches drawn uniformly from --also instead of the --flex variant")
    ap.add_argument("--distill-from", metavar="CKPT",
                    help="a frozen teacher (e.g. the --init checkpoint) that teaches each poor view from a richer "
                         "view of the same clip: the native token grid, the native frame count (training/distill.py)")
    ap.add_argument("--distill-weight", type=float, default=0.5,
                    help="with --distill-from: the distillation term's share of the loss on the views it teaches")
    ap.add_argument("--distill-temperature", type=float, default=2.0)
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                    help="auto: bf16 autocast on a GPU that has it, off on the CPU")
    ap.add_argument("--workers", type=int, default=1, help="decoding processes per rank")
    ap.add_argument("--cache", action="store_true", help="decode each training video once and keep its frames in memory")
    ap.add_argument("--render", type=int, metavar="N",
                    help="synthetic benchmark only: train on N new clips per epoch rendered on the fly "
                         "instead of the train split's videos (validation still decodes the val split)")
    ap.add_argument("--render-clutter", type=float, default=1.0, metavar="SCALE",
                    help="with --render: the rendered clips' clutter (video.synthetic --clutter); "
                         "the val split keeps the clutter it was generated with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=int, metavar="EPOCH",
                    help="end this run after epoch EPOCH (1-based); the schedule still spans --epochs, "
                         "and --resume continues exactly where it stopped")
    ap.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--val-split", default="val", help="manifest split evaluated after each epoch ('' for none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if bool(args.also) != bool(args.also_fraction):
        ap.error("--also and --also-fraction go together")
    if not 0 <= args.distill_weight <= 1 or args.distill_temperature <= 0:
        ap.error("--distill-weight must be in [0, 1] and --distill-temperature > 0")
    if args.stop_after is not None and args.stop_after < 1:
        ap.error(f"--stop-after must be >= 1, got {args.stop_after}")
    return args


def _configs(text: str):
    try:
        return parse_configs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_overrides(items: list[str]) -> dict:
    """--set KEY=VALUE pairs; values read as int, then float, else string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        for cast in (int, float, str):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
    return out


# ----------------------------------------------------------------------------- distributed
def setup_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def batch_starts(n: int, batch_size: int, world: int) -> range:
    """Where each batch of an epoch starts: whole rounds of `world` batches (the rest dropped)."""
    usable = n - n % (batch_size * world) if n >= batch_size * world else n
    return range(0, usable, batch_size)


class BatchItem(NamedTuple):
    """One clip of a batch, as the DataLoader hands it to the dataset."""
    index: int      # the clip
    decoded: int    # frames to decode (more than `frames` for a teacher's view)
    pixels: int
    patch: int
    epoch: int      # with index, seeds the clip's random sampling
    frames: int     # frames the batch trains on


def batches_for_epoch(n: int, batch_size: int, sampler: ConfigSampler, epoch: int, seed: int, rank: int, world: int,
                      decode_frames=None) -> list[list[BatchItem]]:
    """Shuffled batches: every rank draws the same list (same seed) and takes its share, so each
    step's ranks see disjoint clips. `decode_frames(config)` decodes more frames than the batch
    trains on (a teacher's view)."""
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    batches = []
    for start in batch_starts(n, batch_size, world):
        c = sampler.sample()
        decoded = decode_frames(c) if decode_frames else c.frames
        batches.append([BatchItem(i, decoded, c.pixels, c.patch, epoch, c.frames)
                        for i in order[start:start + batch_size]])
    return batches[rank::world]


class _EpochBatches:
    """A batch sampler whose batches are swapped every epoch (so persistent workers survive)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _WithView(torch.utils.data.Dataset):
    """A dataset keyed by BatchItems that also hands back the batch's patch and the frames it
    trains on."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item: BatchItem):
        clip, label = self.dataset[(item.index, item.decoded, item.pixels, item.epoch)]
        return clip, label, item.patch, item.frames


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(net, weight_decay: float):
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        (no_decay if p.dim() < 2 or leaf in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast_dtype(amp: str, device: str):
    if amp == "off" or (amp == "auto" and not device.startswith("cuda")):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


# ----------------------------------------------------------------------------- main
def initial_model(args, classes: list[str]):
    """(network, train state or None): --resume's checkpoint and state; --init's checkpoint with a
    new head unless it was trained on exactly these classes; else a fresh --preset."""
    out = Path(args.out)
    if args.resume:
        if not (out / STATE_FILE).is_file():
            sys.exit(f"--resume: no {STATE_FILE} in {out}")
        net = load_checkpoint(out)
        if list(getattr(net, "labels", None) or classes) != classes:
            sys.exit("--resume: the checkpoint's classes differ from the dataset's")
        return net, torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    if args.init:
        net = load_checkpoint(args.init, num_classes=len(classes), drop_path_rate=args.drop_path)
        if getattr(net, "labels", None) != classes:  # a head kept for its class count means other classes
            _fresh_head(net, classes)
        return net, None
    net = build_model(args.preset, num_classes=len(classes), drop_path_rate=args.drop_path, **parse_overrides(args.set))
    net.labels = list(classes)
    return net, None


def main(argv=None):
    args = parse_args(argv)
    rank, world = setup_distributed(args.device)
    device = args.device if not args.device.startswith("cuda") else f"cuda:{rank % max(1, torch.cuda.device_count())}"
    torch.manual_seed(args.seed + rank)
    out = Path(args.out)

    samples, classes = load_samples(args.data)
    has_splits = all(s.split is not None for s in samples)
    train = [s for s in samples if s.split == "train"] if has_splits else samples
    val = [s for s in samples if s.split == args.val_split] if has_splits and args.val_split else []

    net, state = initial_model(args, classes)
    net.to(device).train()
    cfg = net.config
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net

    sampler = ConfigSampler(args.flex, cfg, args.sizes, args.frames, seed=args.seed + 7919 * rank,
                            also=args.also, also_fraction=args.also_fraction)
    teacher = None
    if args.distill_from:
        frozen = load_checkpoint(args.distill_from).to(device)
        if list(getattr(frozen, "labels", None) or classes) != classes:
            sys.exit("--distill-from: the teacher's classes differ from the dataset's")
        teacher = Teacher(frozen, cfg, args.distill_weight, args.distill_temperature, args.seed + rank)
    if args.render:
        dataset = _WithView(RenderedClips(classes, args.render, seed=args.seed, clutter=args.render_clutter))
    else:
        dataset = _WithView(ClipDataset(train, classes, mode="train", seed=args.seed, cache=args.cache))
    steps_per_epoch = len(batch_starts(len(dataset), args.batch_size, world)[rank::world])
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(param_groups(net, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    amp_dtype = autocast_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp_dtype == torch.float16)
    start_epoch, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        sampler.rng.setstate(_tuple(json.loads(state["sampler_rng"])))
    if rank == 0:
        source = f"{args.render} rendered clips per epoch" if args.render else f"{len(train)} clips"
        print(f"training {args.flex} on {source} ({len(classes)} classes), {world} process(es) on {device}, "
              f"{steps_per_epoch} steps/epoch x {args.epochs} epochs; frames {sampler.frames}, sizes {sampler.sizes}",
              file=sys.stderr)

    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        batches = batches_for_epoch(len(dataset), args.batch_size, sampler, epoch, args.seed, rank, world,
                                    teacher.decode_frames if teacher else None)[:steps_per_epoch]
        if epoch == start_epoch or args.workers == 0 or not args.cache:
            # with a cache, the same worker processes live on across epochs to keep it
            loader = DataLoader(dataset, batch_sampler=_EpochBatches(dataset, batches), num_workers=args.workers,
                                persistent_workers=args.cache and args.workers > 0,
                                multiprocessing_context=worker_context(args.workers))
        loader.batch_sampler.batches = batches
        label = f"epoch {epoch + 1}/{args.epochs}"
        progress = Progress(len(batches), label, interval=10, enabled=rank == 0)
        model.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        for step, (clips, labels, patch, frames) in enumerate(loader):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, warmup, args.lr, args.min_lr)
            clips, labels = clips.to(device, non_blocking=True), labels.to(device)
            patch, frames = int(patch[0]), int(frames[0])
            view = Config(frames, clips.shape[-1], patch)
            with torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=amp_dtype is not None):
                taught = None
                if teacher is not None:
                    clips, taught = teacher.teach(clips, view, epoch, step)
                logits = model(clips, patch=patch).float()
                loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
                if teacher is not None:
                    loss = teacher.loss(loss, logits, taught)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            seen += len(labels) * world
            running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
            rate = seen / (time.perf_counter() - t0)
            progress.update(step + 1, f"loss {running:.3f} lr {optimizer.param_groups[0]['lr']:.2e} "
                                      f"{rate:.1f} clips/s [{clips.shape[2]}f {clips.shape[-1]}px p{patch}]")
        record = {"epoch": epoch + 1, "loss": running, "clips_per_s": seen / (time.perf_counter() - t0),
                  "seconds": time.perf_counter() - t0}
        if rank == 0:
            if val:
                record["val_top1_native"] = top1(net, val, classes, cfg.num_frames, cfg.img_size, cfg.patch_size,
                                                 batch_size=args.batch_size, workers=args.workers)
                net.train()
            history.append(record)
            progress.close(f"{label} {json.dumps(record)}")
            save_checkpoint(net, out, labels=classes, extra={"flex": args.flex, "history": history,
                                                             "command": " ".join(sys.argv)})
            torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "history": json.dumps(history),
                        "sampler_rng": json.dumps(sampler.rng.getstate())}, out / STATE_FILE)
        if world > 1:
            dist.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    return history


def _fresh_head(net, classes):
    """A new classification head (VideoMamba's init: truncated normal, std 0.02; zero bias)."""
    with torch.no_grad():
        net.head.weight.copy_(torch.randn(net.head.weight.shape).clamp_(-2, 2) * 0.02)
        net.head.bias.zero_()
    net.labels = list(classes)


def _tuple(value):
    """JSON turns random.getstate()'s nested tuples into lists; setstate wants tuples back."""
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


if __name__ == "__main__":
    main()
