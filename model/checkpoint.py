"""Checkpoint I/O: our directory format, and import of public VideoMamba (OpenGVLab) files.

Our format is a directory (tensors in safetensors, so loading it never runs code):

    model.safetensors   the state dict
    config.json         VideoMambaConfig.to_dict() plus "stretchysnake_format" (and "extra")
    labels.json         class names, one per output of the head

A public checkpoint is a torch.save file read with weights_only=True. Its configuration is
derived from tensor shapes only, never from the file name (docs/design.md section 4: a released
"f64" file holds a 32-frame temporal embedding).

Either way the state dict is compared with the network it describes first, and every missing
key, unexpected key and shape mismatch is reported in one CheckpointError; the load itself is
strict, so there is never a silent partial load.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import VideoMambaConfig
from .network import VideoMamba

FORMAT_KEY = "stretchysnake_format"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE = "model.safetensors", "config.json", "labels.json"
CONTAINER_KEYS = ("model", "module", "state_dict")  # where training scripts nest the state dict
PREFIXES = ("module.", "backbone.", "encoder.")  # DDP / detection / UMT-style wrappers
LIST_LIMIT = 8  # names shown per list in error messages
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded exactly; the message says what is wrong with it."""


@dataclass
class LoadReport:
    """What load_checkpoint found and did: the derived native configuration and every fix-up."""

    format: str  # "directory" (ours) or "public" (a VideoMamba state dict file)
    path: str
    embed_dim: int
    depth: int
    num_classes: int
    patch_size: int
    tubelet: int
    grid: int  # native spatial token grid side
    num_frames: int  # native frames = temporal tokens x tubelet
    img_size: int
    d_state: int
    expand: int
    dt_rank: int
    d_conv: int
    inflated_kernel: bool = False  # a 2-D ImageNet patch kernel was inflated over time
    temporal_embedding: str = "loaded"  # "loaded", "zeros" (not in the file) or "none" (joint)
    head: str = "loaded"  # "loaded", "fresh" (initialised here) or "none" (features only)
    source_dtypes: tuple[str, ...] = ()
    container: str | None = None  # the key the state dict was nested under, if any
    stripped_prefixes: tuple[str, ...] = ()
    format_version: int | None = None
    extra: dict | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.format} checkpoint {self.path}: C={self.embed_dim} depth={self.depth} "
                f"classes={self.num_classes} native {self.num_frames} frames x {self.img_size} px, "
                f"patch {self.patch_size}, tubelet {self.tubelet}, grid {self.grid}x{self.grid}")
        return "; ".join([text, *self.notes])


# ----------------------------------------------------------------------------- saving
def save_checkpoint(net: VideoMamba, directory, labels=None, extra: dict | None = None) -> Path:
    """Write net to directory as model.safetensors + config.json + labels.json; returns the path.

    labels: one name per class (default "0", "1", ...). extra: JSON-serialisable metadata kept in
    config.json and handed back as load_report.extra."""
    net = _unwrap(net)
    cfg = net.config
    labels = _check_labels([str(i) for i in range(cfg.num_classes)] if labels is None else list(labels),
                           cfg.num_classes, "labels")
    config = {**cfg.to_dict(), FORMAT_KEY: FORMAT_VERSION}
    if extra is not None:
        config["extra"] = dict(extra)
    # Serialise everything before touching the disk, so a bad `extra` leaves no half-written checkpoint.
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    labels_text = json.dumps(labels, indent=1, ensure_ascii=False) + "\n"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(config_text, encoding="utf-8"))
    _write_atomic(directory / LABELS_FILE, lambda tmp: Path(tmp).write_text(labels_text, encoding="utf-8"))
    return directory


def _unwrap(net):
    """The VideoMamba inside torch.compile / DistributedDataParallel wrappers."""
    for attr in ("_orig_mod", "module"):
        while not isinstance(net, VideoMamba) and hasattr(net, attr):
            net = getattr(net, attr)
    if not isinstance(net, VideoMamba):
        raise TypeError(f"save_checkpoint needs a VideoMamba, got {type(net).__name__}")
    return net


def _check_labels(labels, num_classes: int, where: str) -> list[str]:
    if not all(isinstance(name, str) for name in labels):
        raise ValueError(f"{where}: class names must be strings")
    if len(labels) != num_classes:
        raise ValueError(f"{where}: {len(labels)} class names for a head with {num_classes} classes")
    return labels


def _write_atomic(target: Path, write):
    """write(tmp_path) then rename over target: a crash never leaves a truncated file behind."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path, map_location="cpu", num_classes: int | None = None, **config_overrides) -> VideoMamba:
    """Load our checkpoint directory (or its model.safetensors / config.json), or a public
    VideoMamba .pth/.pt state dict, into a VideoMamba in eval mode on `map_location`.

    num_classes: None keeps the file's head; another number (or a headless file) gets a freshly
    initialised head of that size, 0 none at all (features only). config_overrides: fields of
    VideoMambaConfig that shapes cannot tell (backward_order, patch_resize, ...; num_frames and
    tubelet for ImageNet weights). The result carries net.labels (list[str] or None) and
    net.load_report (a LoadReport)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (no such file or directory)")
    known = {f.name for f in dataclasses.fields(VideoMambaConfig)}
    unknown = sorted(set(config_overrides) - known)
    if unknown:
        raise TypeError(f"load_checkpoint got unknown config overrides {unknown}; known: {sorted(known)}")

    directory = _our_directory(path)
    if directory is not None:
        net, labels = _load_directory(directory, num_classes, config_overrides)
    else:
        net, labels = _load_public(path, num_classes, config_overrides), None
    net.eval()
    if map_location is not None:
        net.to(map_location)
    net.labels = labels
    return net


def _our_directory(path: Path) -> Path | None:
    """The checkpoint directory path names, or None for a single-file (public-style) checkpoint."""
    if path.is_dir():
        return path
    if path.name == CONFIG_FILE or (path.name == WEIGHTS_FILE and (path.parent / CONFIG_FILE).is_file()):
        return path.parent
    return None


def _load_directory(directory: Path, num_classes, overrides) -> tuple[VideoMamba, list[str] | None]:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint directory {directory} has no {name}")
    raw = _read_json(directory / CONFIG_FILE)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE} must hold a JSON object, got {type(raw).__name__}")
    version = raw.pop(FORMAT_KEY, FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{directory} has format version {version!r}; this code reads up to {FORMAT_VERSION}")
    extra = raw.pop("extra", None)
    try:
        cfg = VideoMambaConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from None
    if num_classes is not None:  # a different head size is asked for: the stored head is replaced
        overrides = {**overrides, "num_classes": num_classes}
    cfg = _make_config(cfg.to_dict(), overrides, directory)

    state = _read_safetensors(directory / WEIGHTS_FILE)
    file_classes = state["head.weight"].shape[0] if "head.weight" in state else None
    report = _new_report("directory", directory, cfg, format_version=version, extra=extra,
                         source_dtypes=_dtypes(state))
    if cfg.pos_embed == "joint":
        report.temporal_embedding = "none"
    net = _build_and_load(cfg, _as_float32(state), file_classes, num_classes, report)

    labels = None
    if report.head == "loaded" and (directory / LABELS_FILE).is_file():  # a new head has no names yet
        labels = _read_json(directory / LABELS_FILE)
        if not isinstance(labels, list):
            raise CheckpointError(f"{directory / LABELS_FILE} must hold a JSON list of class names")
        try:
            _check_labels(labels, net.config.num_classes, str(directory / LABELS_FILE))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    return net, labels


def _load_public(path: Path, num_classes, overrides) -> VideoMamba:
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path)
    state, container = _find_state_dict(obj, path)
    state, stripped = _strip_prefixes(state, path)
    dtypes = _dtypes(state)
    state = _as_float32(state)
    derived, fixes = _derive_config(state, overrides, path)
    file_classes = state["head.weight"].shape[0] if "head.weight" in state else None
    if num_classes is None and file_classes is None:
        raise CheckpointError(
            f"{path} has no classification head (no head.weight): pass num_classes=K to add a freshly "
            f"initialised head of K classes, or num_classes=0 for a features-only network")
    derived["num_classes"] = file_classes if num_classes is None else num_classes
    cfg = _make_config(derived, overrides, path)
    report = _new_report("public", path, cfg, source_dtypes=dtypes, container=container,
                         stripped_prefixes=stripped, **fixes)
    return _build_and_load(cfg, state, file_classes, num_classes, report)


# ----------------------------------------------------------------------------- reading files
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"could not read {path}: {exc}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt headers
        raise CheckpointError(f"could not read {path} as safetensors (corrupt or truncated?): {exc}") from None


def _torch_load(path: Path):
    """torch.load with weights_only=True: only tensors and plain containers are rebuilt, nothing
    in the file is executed. argparse.Namespace (training args saved beside the weights by
    DeiT-style scripts) is allowed too: it is a plain attribute bag with no code of its own."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):  # torch.save zip archive or legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allow = safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path} is not a plain state dict: loading it would need to run code from the file "
                f"(it refers to {', '.join(sorted(set(found)))}); only tensors and plain containers are "
                f"read (torch.load weights_only=True). Re-save the weights with "
                f"torch.save(model.state_dict(), ...) or save_checkpoint().") from None
        raise CheckpointError(f"could not read {path} (corrupt or not a checkpoint): {_first_line(exc)}") from None
    except Exception as exc:  # truncated zip, bad header, ...
        raise CheckpointError(f"could not read {path} (corrupt or truncated?): {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------------------- public state dicts
def _find_state_dict(obj, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The flat name -> tensor dict inside a loaded file, and the key(s) it was nested under."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    trail = []
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path} is a dict with no tensors (keys: {_names(list(obj))}); "
                                  f"expected a state dict, flat or under one of {list(CONTAINER_KEYS)}")
        trail.append(inner)
        obj = obj[inner]
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: the state dict has {len(not_tensors)} entries that are not tensors: "
                              f"{_names(not_tensors)}")
    return dict(obj), ".".join(trail) or None


def _strip_prefixes(state: dict, path: Path) -> tuple[dict, tuple[str, ...]]:
    out, stripped = {}, set()
    for key, value in state.items():
        name = key
        while (prefix := next((p for p in PREFIXES if name.startswith(p)), None)) is not None:
            stripped.add(prefix)
            name = name[len(prefix):]
        if name in out:
            raise CheckpointError(f"{path}: key {key!r} clashes with another key once prefixes are stripped ({name!r})")
        out[name] = value
    return out, tuple(sorted(stripped))


def _derive_config(state: dict, overrides: dict, path: Path) -> tuple[dict, dict]:
    """Native configuration from tensor shapes. Fixes the ImageNet layout up in place (2-D kernel
    inflated, zero temporal embedding added) and returns the LoadReport fields saying so."""
    notes = []
    fixes = dict(inflated_kernel=False, temporal_embedding="loaded", notes=notes)
    c = _embed_dim(state, path)
    depth, layer = _layer_shapes(state, path)
    derived = dict(embed_dim=c, depth=depth)

    # Mixer sizes from layer shapes; a missing tensor leaves the default and is reported as missing later.
    if "mixer.A_log" in layer:
        e, derived["d_state"] = layer["mixer.A_log"]
        if e % c:
            raise CheckpointError(f"{path}: mixer width {e} (layers.*.mixer.A_log) is not a multiple of "
                                  f"embed_dim {c}")
        derived["expand"] = e // c
    if "mixer.dt_proj.weight" in layer:
        derived["dt_rank"] = layer["mixer.dt_proj.weight"][1]
    if "mixer.conv1d.weight" in layer:
        derived["d_conv"] = layer["mixer.conv1d.weight"][-1]

    tubelet = overrides.get("tubelet", 1)
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None:
        if kernel.dim() not in (4, 5) or kernel.shape[-1] != kernel.shape[-2]:
            raise CheckpointError(f"{path}: patch_embed.proj.weight has shape {tuple(kernel.shape)}; expected "
                                  f"[C, 3, k, p, p] (video) or [C, 3, p, p] (ImageNet)")
        if kernel.dim() == 5:
            tubelet = kernel.shape[2]
        else:  # ImageNet: averaging over the tubelet keeps a static video's tokens unchanged
            state["patch_embed.proj.weight"] = kernel.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
            fixes["inflated_kernel"] = True
            notes.append(f"patch_embed.proj.weight: 2-D ImageNet kernel {tuple(kernel.shape)} inflated to "
                         f"tubelet {tubelet}")
        derived.update(patch_size=kernel.shape[-1], in_chans=kernel.shape[1], tubelet=tubelet)
    patch = derived.get("patch_size", overrides.get("patch_size", VideoMambaConfig.patch_size))

    pos = state.get("pos_embed")
    if pos is not None:
        _expect_dims(pos, 3, "pos_embed", "[1, 1+P, C]", path)
        spatial = pos.shape[1] - 1
        grid = math.isqrt(max(spatial, 0))
        if spatial < 1 or grid * grid != spatial:
            raise CheckpointError(f"{path}: pos_embed has {spatial} patch rows (shape {tuple(pos.shape)}), not a "
                                  f"square number, so it is no square token grid")
        derived["img_size"] = grid * patch

    temporal = state.get("temporal_pos_embedding")
    if temporal is not None:
        _expect_dims(temporal, 3, "temporal_pos_embedding", "[1, T', C]", path)
        derived["num_frames"] = temporal.shape[1] * tubelet
    elif kernel is not None and kernel.dim() == 4:  # ImageNet weights have no time: start from zero
        frames = overrides.get("num_frames", VideoMambaConfig.num_frames)
        state["temporal_pos_embedding"] = torch.zeros(1, max(frames // tubelet, 1), c)
        fixes["temporal_embedding"] = "zeros"
        notes.append(f"temporal_pos_embedding: not in the file (ImageNet weights); zeros for "
                     f"{max(frames // tubelet, 1)} temporal tokens")
    return derived, fixes


def _embed_dim(state: dict, path: Path) -> int:
    for key, axis in (("cls_token", -1), ("pos_embed", -1), ("norm_f.weight", 0),
                      ("patch_embed.proj.weight", 0), ("layers.0.norm.weight", 0)):
        if key in state and state[key].dim() > 0:
            return state[key].shape[axis]
    raise CheckpointError(f"{path} is not a VideoMamba state dict: none of cls_token, pos_embed, norm_f.weight, "
                          f"patch_embed.proj.weight found (keys: {_names(list(state))})")


def _layer_shapes(state: dict, path: Path) -> tuple[int, dict[str, tuple]]:
    """(depth, per-layer key suffix -> shape). Every layer must have the same shapes: a network has
    one width, so layers that disagree are reported here rather than as a pile of mismatches."""
    seen: dict[str, dict[tuple, list[int]]] = {}
    for key, value in state.items():
        match = _LAYER_KEY.match(key)
        if match:
            seen.setdefault(match[2], {}).setdefault(tuple(value.shape), []).append(int(match[1]))
    if not seen:
        raise CheckpointError(f"{path} is not a VideoMamba state dict: no layers.<i>.* keys "
                              f"(keys: {_names(list(state))})")
    clashes = [f"layers.*.{suffix} is " + " but ".join(f"{list(shape)} in layers {sorted(idx)}"
                                                      for shape, idx in shapes.items())
               for suffix, shapes in sorted(seen.items()) if len(shapes) > 1]
    if clashes:
        raise CheckpointError(f"{path}: inconsistent shapes across layers (layers of different widths): "
                              + "; ".join(clashes[:LIST_LIMIT])
                              + (f"; ... {len(clashes) - LIST_LIMIT} more" if len(clashes) > LIST_LIMIT else ""))
    depth = 1 + max(i for shapes in seen.values() for idx in shapes.values() for i in idx)
    return depth, {suffix: next(iter(shapes)) for suffix, shapes in seen.items()}


def _expect_dims(tensor: torch.Tensor, ndim: int, name: str, layout: str, path: Path):
    if tensor.dim() != ndim or tensor.shape[0] != 1:
        raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {layout}")


# ----------------------------------------------------------------------------- common to both formats
def _make_config(values: dict, overrides: dict, path) -> VideoMambaConfig:
    """Derived values, then the caller's overrides on top."""
    try:
        return VideoMambaConfig(**{**values, **overrides})
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _build_and_load(cfg: VideoMambaConfig, state: dict, file_classes, num_classes, report: LoadReport) -> VideoMamba:
    """Build the network, check the state dict against it (all problems at once), load strictly."""
    keep_head = file_classes is not None and num_classes in (None, file_classes)
    if not keep_head:  # a new head was asked for (or the file has none): the file's head does not apply
        dropped = [k for k in state if k.startswith("head.")]
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        report.head = "fresh" if cfg.num_classes > 0 else "none"
        if dropped:
            report.notes.append(f"head: the file's {file_classes}-class head replaced by "
                                + (f"a fresh {cfg.num_classes}-class head" if cfg.num_classes else "none (features only)"))
        elif cfg.num_classes:
            report.notes.append(f"head: not in the file; fresh {cfg.num_classes}-class head")
    net = VideoMamba(cfg)
    expected = net.state_dict()
    if not keep_head:
        state.update({k: v for k, v in expected.items() if k.startswith("head.")})
    _check_matches(state, expected, cfg, report.path)
    net.load_state_dict(state, strict=True)
    net.load_report = report
    return net


def _check_matches(state: dict, expected: dict, cfg: VideoMambaConfig, path):
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    parts = [_counted(len(items), what) + ": " + _names(items)
             for items, what in ((missing, "missing key"), (unexpected, "unexpected key"),
                                 (mismatched, "shape mismatch")) if items]
    raise CheckpointError(
        f"{path} does not match the network it describes (embed_dim={cfg.embed_dim}, depth={cfg.depth}, "
        f"patch {cfg.patch_size}, tubelet {cfg.tubelet}, {cfg.num_frames} frames, {cfg.img_size} px, "
        f"d_state={cfg.d_state}, expand={cfg.expand}, dt_rank={cfg.dt_rank}, d_conv={cfg.d_conv}): "
        + "; ".join(parts))


def _new_report(fmt: str, path, cfg: VideoMambaConfig, **fields) -> LoadReport:
    return LoadReport(format=fmt, path=str(path), embed_dim=cfg.embed_dim, depth=cfg.depth,
                      num_classes=cfg.num_classes, patch_size=cfg.patch_size, tubelet=cfg.tubelet,
                      grid=cfg.grid_size, num_frames=cfg.num_frames, img_size=cfg.img_size, d_state=cfg.d_state,
                      expand=cfg.expand, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv, **fields)


def _as_float32(state: dict) -> dict:
    """Public weights may be fp16/bf16; the network's parameters are fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _dtypes(state: dict) -> tuple[str, ...]:
    return tuple(sorted({str(v.dtype).replace("torch.", "") for v in state.values()}))


def _counted(n: int, what: str) -> str:
    plural = "es" if what.endswith("ch") else "s"
    return f"{n} {what}{'' if n == 1 else plural}"


def _names(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:LIST_LIMIT])
    return shown + (f", ... ({len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else "")
