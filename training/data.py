"""Datasets: the three on-disk layouts we read, and the clip dataset the training loop batches.

Layouts (load_samples picks by what the path is):
  - a manifest CSV with a header `path,label,split` (what `python -m video.synthetic` writes);
  - a folder per class, `ROOT/<class>/<video>` (the UCF101 / HMDB51 layout);
  - a CSV of `path,label` (header optional).
Paths are resolved relative to the CSV's folder (or ROOT).
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from video import Limits, decode_frames, frame_indices, load_clip, preprocess, probe, sample_times
from video import synthetic

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"}


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    split: str | None = None


def load_samples(source, split: str | None = None) -> tuple[list[Sample], list[str]]:
    """(samples, class names) from a manifest, a folder tree or a path,label CSV. With `split`,
    only that split of a manifest (asking for a split of a layout without splits is an error)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"dataset not found: {source}")
    samples = read_folder_tree(source) if source.is_dir() else read_csv(source)
    classes = _class_names(source, samples)
    if split is not None:
        if any(s.split is None for s in samples):
            raise ValueError(f"{source} has no split column; cannot select split {split!r}")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise ValueError(f"{source} has no samples in split {split!r}")
    return samples, classes


def read_csv(path: Path) -> list[Sample]:
    """A manifest (`path,label,split` header) or a `path,label` CSV, header optional."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    has_header = "path" in header and "label" in header
    if has_header:
        cols = {name: header.index(name) for name in ("path", "label", "split") if name in header}
        rows = rows[1:]
    else:
        cols = {"path": 0, "label": 1}
    samples = []
    for line, row in enumerate(rows, start=2 if has_header else 1):
        try:
            rel, label = row[cols["path"]].strip(), row[cols["label"]].strip()
            split = row[cols["split"]].strip() if "split" in cols else None
        except IndexError:
            raise ValueError(f"{path}, line {line}: expected columns {list(cols)}, got {row}") from None
        samples.append(Sample(str((path.parent / rel).resolve()), label, split))
    return samples


def read_folder_tree(root: Path) -> list[Sample]:
    samples = [Sample(str(f.resolve()), class_dir.name)
               for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
               for f in sorted(class_dir.rglob("*")) if f.suffix.lower() in VIDEO_SUFFIXES]
    if not samples:
        raise ValueError(f"{root} holds no videos in class folders ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return samples


def _class_names(source: Path, samples: list[Sample]) -> list[str]:
    """classes.json beside a manifest fixes the order; otherwise sorted label names."""
    listed = (source if source.is_dir() else source.parent) / "classes.json"
    if listed.is_file():
        classes = json.loads(listed.read_text())
        unknown = sorted({s.label for s in samples} - set(classes))
        if unknown:
            raise ValueError(f"labels not in {listed}: {unknown[:10]}")
        return classes
    return sorted({s.label for s in samples})


def worker_context(workers: int) -> str | None:
    """DataLoader workers start from a fork server, not by forking this process: a process
    that already runs threads (OpenMP, queue feeders, a persistent loader's) can fork a worker
    that waits forever (measured: the evaluation loader after a cached training run's
    persistent one, in tests/test_training.py run on its own)."""
    return "forkserver" if workers > 0 and sys.platform != "win32" else None


class ClipDataset(Dataset):
    """Indexed by (sample index, frames, pixels[, epoch]): the batch sampler decides the
    configuration of each batch, so flexible training batches clips of one shape. Train mode
    samples a random point in each temporal segment (seeded by seed, epoch and index; the epoch
    travels in the key because worker processes hold their own copy of the dataset); test mode
    the middles.

    cache=True decodes each video once, every frame at its own size, and then samples and
    resizes from memory (training revisits every clip each epoch, at changing configurations;
    a 64-frame 128 px clip is 3 MB). Without it every item is a sparse decode (load_clip), in
    `decode_mode` (video.decode_frames; "keyframe" needs the sparse decode, not the cache)."""

    def __init__(self, samples: list[Sample], classes: list[str], mode: str = "test", seed: int = 0,
                 cache: bool = False, decode_mode: str = "exact"):
        if cache and decode_mode != "exact":
            raise ValueError("the cache decodes every frame: decode_mode must be 'exact' with it")
        self.samples, self.classes, self.mode, self.seed = samples, classes, mode, seed
        self.decode_mode = decode_mode
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.cache: dict[int, tuple[float, np.ndarray]] | None = {} if cache else None
        self.limits = Limits.unlimited()  # our own dataset on a busy machine: no decode-time limit

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, frames, pixels, *epoch = key
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, *epoch, index)) if self.mode == "train" else None
        if self.cache is None:
            clip = load_clip(sample.path, frames, pixels, mode=self.mode, rng=rng,
                             limits=self.limits, decode_mode=self.decode_mode)
        else:
            duration, all_frames = self._decoded(index)
            times = sample_times(duration, frames, self.mode, rng)
            shown = frame_indices(times / duration, len(all_frames))
            clip = preprocess(all_frames[shown], pixels)
        return clip, torch.tensor(self.class_index[sample.label])

    def _decoded(self, index: int) -> tuple[float, np.ndarray]:
        if index not in self.cache:
            path = self.samples[index].path
            info = probe(path, self.limits)
            count = max(1, info.num_frames or round(info.duration_s * info.fps))
            every = (np.arange(count) + 0.5) * info.duration_s / count  # one time inside each frame
            self.cache[index] = (info.duration_s, decode_frames(path, count, times=every, info=info,
                                                                limits=self.limits))
        return self.cache[index]


class RenderedClips(Dataset):
    """The synthetic benchmark's classes rendered on the fly: a new clip for every (index, epoch),
    so a from-scratch model never sees the same clip twice. Keyed like ClipDataset; index i is
    of class i mod len(classes) (balanced). The frames are drawn at the instants that sparse
    decoding of a generated clip would show (video.sampling's segments, on its frame grid) at the
    generator's native size, then go through the same preprocess: only H.264's compression
    differs from what evaluation on the encoded clips sees. Streams are seeded by (salt, seed,
    epoch, index), apart from the generator's (seed, clip) streams."""

    SALT = 0x5EED

    def __init__(self, classes: list[str], clips_per_epoch: int, seed: int = 0,
                 size: int = synthetic.NATIVE, clip_frames: int = 64, clutter: float = 1.0):
        unknown = sorted(set(classes) - set(synthetic.CLASSES))
        if unknown:
            raise ValueError(f"cannot render classes that are not the synthetic benchmark's: {unknown}")
        if clips_per_epoch < 1:
            raise ValueError(f"clips_per_epoch must be positive, not {clips_per_epoch}")
        if not 0 <= clutter <= 3:  # the generator's own range
            raise ValueError(f"clutter must be in 0..3, not {clutter}")
        self.classes, self.clips_per_epoch, self.seed = classes, clips_per_epoch, seed
        self.size, self.clip_frames, self.clutter = size, clip_frames, clutter

    def __len__(self):
        return self.clips_per_epoch

    def __getitem__(self, key):
        index, frames, pixels, *epoch = key
        rng = np.random.default_rng((self.SALT, self.seed, *epoch, index))
        label = index % len(self.classes)
        # the frame each sampled instant lands on in an encoded clip of clip_frames frames
        shown = frame_indices(sample_times(1.0, frames, "train", rng), self.clip_frames)
        clip = synthetic.render_clip(self.classes[label], rng, self.size, clutter=self.clutter,
                                     times=shown / (self.clip_frames - 1))
        return preprocess(clip, pixels), torch.tensor(label)
