"""Which profile table a server uses: `STRETCHYSNAKE_PROFILE`, else `profiles/<device>.json`,
else a quick profile measured at startup and cached for the next start; and the table made to fit
the loaded network (`reconcile`: only configurations it can run, GFLOPs and tokens recomputed).

    table, source = resolve_table(net, settings, device, QuickProfile())
    table, notes = reconcile(table, net)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from model import count_flops
from model.flops import tokens as count_tokens

from . import devices
from . import profile as prof
from .selector import ProfileError, ProfileTable
from .settings import Settings

log = logging.getLogger("stretchysnake.serving")


@dataclasses.dataclass(frozen=True)
class QuickProfile:
    """How the server measures a profile itself when it finds none: a small grid around the
    model's native configuration and a short timing budget (seconds, not minutes)."""

    frame_ratios: tuple = (0.5, 1, 2)
    pixel_ratios: tuple = (0.5, 1)
    warmup: int = 1
    min_runs: int = 5
    min_seconds: float = 0.2
    max_runs: int = 50
    decode_seconds: float = 3.0
    decode_video_sides: tuple = (128, 240)
    decode_durations: tuple = (2.0,)
    decode_codecs: tuple = ("libx264",)
    decode_repeats: int = 2


# What decides a model's latencies (not its head or its training settings).
ARCHITECTURE = ("embed_dim", "depth", "patch_size", "img_size", "num_frames", "tubelet",
                "d_state", "expand")


def differences(table: ProfileTable, net) -> list[str]:
    """How the model a table was measured on differs from `net` ("embed_dim 96 vs 192", ...);
    empty when they agree or the table does not say."""
    meta_model = table.meta.get("model")
    if not isinstance(meta_model, dict):
        return []
    ours = net.config.to_dict()
    return [f"{k} {meta_model[k]} vs {ours.get(k)}" for k in ARCHITECTURE
            if k in meta_model and meta_model[k] != ours.get(k)]


def model_fingerprint(net) -> str:
    text = json.dumps(net.config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reconcile(table: ProfileTable, net) -> tuple[ProfileTable, list[str]]:
    """The table restricted to configurations this network can run, with tokens and GFLOPs
    recomputed from the network (the table may come from another model); notes say what
    changed."""
    cfg = net.config
    notes, keep = [], []
    differ = differences(table, net)
    if differ:
        notes.append("the profile was measured on a different model (" + ", ".join(differ)
                     + "): its latencies are corrected online from observed requests")
    changed = 0
    for c in table.configs:
        try:
            toks = count_tokens(cfg, c.frames, c.pixels, c.patch)
            gf = count_flops(cfg, c.frames, c.pixels, c.patch)
        except ValueError as e:
            notes.append(f"configuration {c.key} dropped: {e}")
            continue
        if toks != c.tokens or not math.isclose(gf, c.gflops, rel_tol=1e-3):
            c = dataclasses.replace(c, tokens=toks, gflops=gf)
            changed += 1
        keep.append(c)
    if not keep:
        raise ProfileError(["no configuration of the profile table can run on this model",
                            *notes])
    if changed:
        notes.append(f"GFLOPs/tokens of {changed} configuration(s) recomputed for this model")
    return dataclasses.replace(table, configs=tuple(keep)), notes


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between the worker processes of one machine (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def quick_decode_model(quick: QuickProfile, frames, pixels) -> dict:
    frames, sides = sorted(set(frames)), sorted({min(pixels), max(pixels)})
    videos = len(quick.decode_video_sides) * len(quick.decode_durations) * len(quick.decode_codecs)
    if len(frames) * len(sides) * videos < 2:  # the fit needs two measurements at least
        frames.append(2 * frames[-1])
    return prof.profile_decode(frames, sides,
                               video_sides=quick.decode_video_sides,
                               durations=quick.decode_durations, codecs=quick.decode_codecs,
                               repeats=quick.decode_repeats, budget_s=quick.decode_seconds,
                               show_progress=False)


def measure_quick_profile(net, device, quick: QuickProfile, checkpoint: str) -> dict:
    cfg = net.config
    frames, pixels = prof.default_axes(cfg, quick.frame_ratios, quick.pixel_ratios)
    configs, skipped = prof.make_grid(cfg, frames, pixels)
    if not configs:
        raise ProfileError("the quick profile grid is empty for this model")
    decode = quick_decode_model(quick, [t for t, _, _ in configs], [p for _, p, _ in configs])
    return prof.build_table(
        net, configs, device=device, warmup=quick.warmup, min_runs=quick.min_runs,
        min_seconds=quick.min_seconds, max_runs=quick.max_runs, decode_model=decode,
        show_progress=False,
        meta={"command": "measured by the server at startup (quick profile; run "
                         "`python -m serving.profile` for a proper table)",
              "checkpoint": checkpoint, "skipped": skipped, "quick": dataclasses.asdict(quick)})


def resolve_table(net, settings: Settings, device: torch.device,
                  quick: QuickProfile) -> tuple[ProfileTable, str]:
    """(table, where it came from): STRETCHYSNAKE_PROFILE, else profiles/<device>.json when it
    was measured on this model's architecture, else a quick profile of this model measured now
    around its native configuration (kept in the cache directory, by device and model
    fingerprint, for the next start; a file lock makes the workers of one machine measure it
    once)."""
    if settings.profile is not None:
        if not settings.profile.is_file():
            raise ProfileError("file not found (from STRETCHYSNAKE_PROFILE)", settings.profile)
        return ProfileTable.load(settings.profile), str(settings.profile)
    default = devices.default_profile_path(device)
    if default.is_file():
        table = ProfileTable.load(default)
        differ = differences(table, net)
        if not differ:
            return table, str(default)
        log.warning("the profile table %s was measured on another model (%s): not used for "
                    "this one", default, ", ".join(differ))
    slug = devices.profile_name(devices.device_name(device))
    cached = settings.cache / "profiles" / f"{slug}-{model_fingerprint(net)}-quick.json"
    with _file_lock(cached.with_suffix(".lock")):
        if cached.is_file():
            try:
                table = ProfileTable.load(cached)
                log.warning("no profile table at %s: using the quick profile measured at an "
                            "earlier start, %s", default, cached)
                return table, f"{cached} (quick profile)"
            except ProfileError as e:
                log.warning("ignoring a broken cached quick profile: %s", e)
        cfg = net.config
        log.warning("no profile table for this device and model at %s: measuring a quick "
                    "profile around the native %dx%d/%d now (seconds to a minute; `python -m "
                    "serving.profile --checkpoint ...` writes a proper one)", default,
                    cfg.num_frames, cfg.img_size, cfg.patch_size)
        t0 = time.perf_counter()
        table_dict = measure_quick_profile(net, device, quick, str(settings.checkpoint))
        prof.write_table(table_dict, cached)
        log.warning("quick profile: %d configurations measured in %.1f s, saved to %s",
                    len(table_dict["configs"]), time.perf_counter() - t0, cached)
        return ProfileTable.load(cached), f"{cached} (quick profile, measured now)"
