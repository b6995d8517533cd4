"""Latency profiler: the profile table the budget selector reads (docs/design.md sections 3 and 6).

    python -m serving.profile --checkpoint CKPT [--out profiles/NAME.json] [--device cpu|cuda]
        [--frames 4,8,16,32] [--pixels 56,112,224] [--patches 8,16] [--max-tokens N]
        [--batch-sizes 1,4] [--warmup 3] [--min-runs 30] [--min-seconds 2] [--max-runs 1000]
        [--threads N] [--no-decode] [--decode-repeats 3] [--decode-seconds 60] [--quiet]
    python -m serving.profile --preset nano ...   # fresh model: latency ignores the weights

It times the model over a grid of (frames, pixels, patch) configurations on one device, then
(unless --no-decode) encodes a few test videos, times `video.decode_frames` on them and fits the
`DecodeModel` the server uses to predict decode time from a video's metadata. Without --out the
table goes to `profiles/<device slug>.json` (`serving.devices.default_profile_path`), where the
server looks.

Default grid, from the model's native (T frames, P pixels, patch p, token grid g = P // p):
frames {T/2, T, 2T, 4T}, pixels {P/2, P, 2P}, and for each size the static-tokens patch
(pixels // g, the native token grid), the native patch and the patch of a 2x2 token grid
(pixels // 2: the cheapest configurations, 4 tokens a frame). Configurations whose patch is larger
than the frame, or with more than --max-tokens tokens (default 4x the native count), are skipped
and listed in meta.skipped.

The table (validated with `serving.selector.ProfileTable.from_dict` before it is written):

    {"meta": {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "threads": 16,
              "torch": "2.5.1", "python": "3.11.9", "date": "2025-01-01T12:00:00+00:00",
              "command": "python -m serving.profile ...", "checkpoint": "runs/nano",
              "model": {VideoMambaConfig fields}, "batch_sizes": [1, 4],
              "timing": {"warmup", "min_runs", "min_seconds", "max_runs"}, "max_tokens": 1572,
              "latency": ..., "memory": ..., "gflops": ... (what the numbers mean),
              "skipped": [{"frames", "pixels", "patch", "reason"}]},
     "configs": [{"frames": 8, "pixels": 112, "patch": 16, "tokens": 393, "gflops": 0.61,
                  "latency_ms": {"p50", "p95", "p99", "mean", "min", "max"},   # batch 1
                  "runs": 40, "peak_memory_mb": 12.3, "accuracy": null,
                  "batches": {"4": {"latency_ms": {...}, "runs": 12, "peak_memory_mb": 45.6}}}],
     "decode_model": DecodeModel.to_dict() plus "videos" (how the test videos were made) and
                     "samples" (the measurements, to refit later), or null}

Latency is the model's forward only (input already on the device, flexed weights already
cached, as in the server), fp32 under torch.inference_mode(), CUDA synchronised around each run.
Peak memory is the growth over what was held before one extra, untimed forward (weights and
input excluded): torch.cuda.max_memory_allocated on CUDA; on CPU the peak resident set size
(VmHWM, reset through /proc/self/clear_refs; Linux only, otherwise null), which misses memory
the allocator reuses from earlier frees, so it is a lower bound. Accuracy stays null: the Pareto
benchmark fills it in. Profile an idle machine: on a CPU another process keeps busy, torch's
spinning OpenMP threads were seen to run 100x slower (--threads 1 avoids that, but then the
table describes one thread).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import av
import torch

from common.progress import Progress
from model import CheckpointError, build_model, count_flops, load_checkpoint
from model.config import PRESETS, VideoMambaConfig
from model.flex import static_tokens_patch
from model.flops import tokens as count_tokens
from video.camera import realistic_set

from .decode_cost import DecodeModel, heldout_report, measure_decode, write_test_videos
from .devices import default_profile_path, device_name, resolve_device
from .latency import measure_interleaved
from .selector import ProfileError, ProfileTable

Key = tuple[int, int, int]  # (frames, pixels, patch)
FRAME_RATIOS = (0.5, 1, 2, 4)
PIXEL_RATIOS = (0.5, 1, 2)
COARSE_GRID = 2  # the coarsest token grid that still has a layout: where >= 90% FLOP cuts live
MAX_TOKENS_FACTOR = 4  # default --max-tokens: this many times the native token count


# ----------------------------------------------------------------------------- the grid
def default_axes(cfg: VideoMambaConfig, frame_ratios: Iterable[float] = FRAME_RATIOS,
                 pixel_ratios: Iterable[float] = PIXEL_RATIOS) -> tuple[list[int], list[int]]:
    """(frames, pixels) around the native configuration: T x {0.5,1,2,4}, P x {0.5,1,2} by default."""
    frames = sorted({max(cfg.tubelet, round(cfg.num_frames * r)) for r in frame_ratios})
    pixels = sorted({max(1, round(cfg.img_size * r)) for r in pixel_ratios})
    return frames, pixels


def native_tokens(cfg: VideoMambaConfig) -> int:
    return count_tokens(cfg, cfg.num_frames, cfg.img_size, cfg.patch_size)


def make_grid(cfg: VideoMambaConfig, frames: Iterable[int] | None = None,
              pixels: Iterable[int] | None = None, patches: Iterable[int] | None = None,
              max_tokens: int | None = None) -> tuple[list[Key], list[dict]]:
    """(configurations to profile, sorted; skipped ones with the reason).

    patches=None: for each size its static-tokens patch, the native patch and the 2x2-grid
    patch (pixels // COARSE_GRID). max_tokens=None:
    MAX_TOKENS_FACTOR x the native token count."""
    default_frames, default_pixels = default_axes(cfg)
    frames = sorted(set(frames or default_frames))
    pixels = sorted(set(pixels or default_pixels))
    limit = max_tokens if max_tokens is not None else MAX_TOKENS_FACTOR * native_tokens(cfg)
    keep, skipped = [], []
    for t in frames:
        for px in pixels:
            choices = (sorted(set(patches)) if patches
                       else sorted({static_tokens_patch(px, cfg.grid_size), cfg.patch_size,
                                    max(1, px // COARSE_GRID)}))
            for p in choices:
                if t < cfg.tubelet:
                    why = f"fewer frames than the tubelet ({cfg.tubelet})"
                elif p > px:
                    why = "patch larger than the frame"
                elif count_tokens(cfg, t, px, p) > limit:
                    why = f"{count_tokens(cfg, t, px, p)} tokens > max_tokens {limit}"
                else:
                    keep.append((t, px, p))
                    continue
                skipped.append({"frames": t, "pixels": px, "patch": p, "reason": why})
    return keep, skipped


# ----------------------------------------------------------------------------- model latency
def profile_latency(net, configs: Sequence[Key], *, device=None, batch_sizes: Iterable[int] = (1,),
                    warmup: int = 3, min_runs: int = 30, min_seconds: float = 2.0,
                    max_runs: int = 1000, progress: Progress | None = None) -> list[dict]:
    """One table entry per configuration (batch 1 at the top, larger batches under "batches").
    Every batch size is timed over all configurations at once, interleaved."""
    device = resolve_device(device)
    net = net.to(device).eval()
    cfg = net.config
    sizes = sorted(set(batch_sizes) | {1})
    measured: dict[int, list[dict]] = {}
    for j, b in enumerate(sizes):
        def on_round(finished: int, b=b, j=j):
            if progress is not None:
                progress.update(j * len(configs) + finished, f"batch {b}: {finished}/{len(configs)} configurations")
        on_round(0)
        measured[b] = measure_interleaved(net, configs, b, device, warmup=warmup, min_runs=min_runs,
                                          min_seconds=min_seconds, max_runs=max_runs, on_round=on_round)
    entries = []
    for i, (frames, pixels, patch) in enumerate(configs):
        entry = {"frames": frames, "pixels": pixels, "patch": patch,
                 "tokens": count_tokens(cfg, frames, pixels, patch),
                 "gflops": count_flops(cfg, frames, pixels, patch)}
        entry.update(measured[1][i])
        entry["accuracy"] = None  # the Pareto benchmark fills it in
        entry["batches"] = {str(b): measured[b][i] for b in sizes if b != 1}
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------- decode cost
def profile_decode(frames: Sequence[int], short_sides: Sequence[int], *,
                   video_sides: Sequence[int] = (128, 240, 480),
                   durations: Sequence[float] = (2.0, 6.0),
                   codecs: Sequence[str] = ("libx264", "mpeg4"), repeats: int = 3,
                   budget_s: float | None = 60.0, show_progress: bool = True,
                   camera_dir: Path | None = None) -> dict:
    """Write test videos to a temporary directory, time decoding them, fit a DecodeModel:
    its to_dict() plus "samples" (the measurements it was fitted on) and "videos" (how they
    were made).

    With `camera_dir`: also the camera- and phone-like clips of `video.camera.realistic_set`
    (written there once, kept for the next run), measured in one shuffled run so that a machine
    that slows down meanwhile slows both halves alike. The model is then fitted on the test
    videos and every other camera clip (the test videos hold the small frames the camera set
    lacks), and "heldout" reports its error on the other clips side by side with the model
    the test videos alone give (`heldout_report`). The camera clips' measurement has no time
    budget."""
    camera = realistic_set() if camera_dir is not None else []
    with tempfile.TemporaryDirectory(prefix="stretchysnake-decode-") as tmp:
        paths = write_test_videos(Path(tmp), video_sides, durations, codecs)
        if camera:
            Path(camera_dir).mkdir(parents=True, exist_ok=True)
            written = Progress(len(camera), "writing camera clips", enabled=show_progress)
            camera_paths = []
            for i, clip in enumerate(camera):
                camera_paths.append(clip.write(camera_dir, seed=i))
                written.update(i + 1, clip.name)
            written.close()
        jobs = 2 * len(frames) * len(short_sides)
        progress = Progress(jobs * (len(paths) + len(camera)), "decode", enabled=show_progress)
        try:
            samples = measure_decode(paths, frames, short_sides, repeats, budget_s, progress)
            measured = measure_decode(camera_paths, frames, short_sides, repeats,
                                      progress=progress,
                                      progress_start=jobs * len(paths)) if camera else []
        finally:
            progress.close()
    held_names = {c.name for c in camera[1::2]}
    fit_camera = [s for s in measured if s["file"] not in held_names]
    held = [s for s in measured if s["file"] in held_names]
    planned = len(paths) * len(frames) * len(short_sides)  # exact; keyframe where it applies
    exact = sum(s["decode"] == "exact" for s in samples)
    out = {"videos": {"short_sides": list(video_sides), "durations_s": list(durations),
                      "codecs": list(codecs), "repeats": repeats, "measured": exact,
                      "planned": planned, "keyframe_measured": len(samples) - exact},
           "samples": [_rounded(s) for s in samples + fit_camera]}
    if camera:
        out["videos"]["camera"] = {"fit": [c.name for c in camera[0::2]],
                                   "heldout": [c.name for c in camera[1::2]]}
        out["heldout"] = {"samples": [_rounded(s) for s in held]}
    return fit_decode(out)


def fit_decode(decode: Mapping) -> dict:
    """A decode-model entry fitted from the samples it holds (the profiler's measurements, or a
    table's stored ones after a change to the decode-cost model): DecodeModel.to_dict() merged
    in and, where it holds held-out samples, their report for this model and for the model the
    test videos alone give."""
    model = DecodeModel.fit_samples(decode["samples"])
    out = {**decode, **model.to_dict()}
    heldout = decode.get("heldout")
    if heldout:
        camera = set(decode["videos"]["camera"]["fit"])
        test_videos = [s for s in decode["samples"] if s["file"] not in camera]
        alone = DecodeModel.fit_samples(test_videos)
        out["heldout"] = {"samples": heldout["samples"],
                          "this_model": heldout_report(model, heldout["samples"]),
                          "test_videos_only": heldout_report(alone, heldout["samples"])}
    return out


def _rounded(sample: Mapping) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sample.items()}


# ----------------------------------------------------------------------------- the table
def machine_meta(device: torch.device) -> dict:
    return {"device": device_name(device), "device_type": device.type,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "av": av.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def build_table(net, configs: Sequence[Key], *, device=None, batch_sizes: Iterable[int] = (1,),
                warmup: int = 3, min_runs: int = 30, min_seconds: float = 2.0,
                max_runs: int = 1000, decode_model: dict | None = None,
                meta: Mapping | None = None, show_progress: bool = True) -> dict:
    """Profile `net` over `configs` into a table dict that ProfileTable.from_dict accepts.
    meta: extra meta keys (command, checkpoint, skipped, ...)."""
    if not configs:
        raise ValueError("no configurations to profile")
    device = resolve_device(device)
    sizes = sorted(set(batch_sizes) | {1})
    progress = Progress(len(configs) * len(sizes), "configs x batch sizes", enabled=show_progress)
    try:
        entries = profile_latency(net, configs, device=device, batch_sizes=sizes, warmup=warmup,
                                  min_runs=min_runs, min_seconds=min_seconds, max_runs=max_runs,
                                  progress=progress)
    finally:
        progress.close()
    if device.type == "cuda":
        how = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
    else:
        how = ("CPU peak RSS (VmHWM after /proc/self/clear_refs) minus RSS before; a lower bound "
               "(memory the allocator reuses is not seen), null where unavailable")
    mem = "MiB a forward adds at its peak over the weights and input: " + how
    table = {"meta": {**machine_meta(device), "command": "python -m serving.profile",
                      "model": net.config.to_dict(), "batch_sizes": sizes,
                      "timing": {"warmup": warmup, "min_runs": min_runs,
                                 "min_seconds": min_seconds, "max_runs": max_runs},
                      "latency": "ms of one forward (model only: input on the device, flexed "
                                 "weights cached), fp32, torch.inference_mode, CUDA synchronised",
                      "memory": mem,
                      "gflops": "model.count_flops: fvcore convention (1 multiply-add = 1 FLOP), "
                                "selective scan counted analytically, batch 1",
                      **(meta or {})},
             "configs": entries, "decode_model": decode_model}
    ProfileTable.from_dict(table)  # never write a table the server would refuse
    return table


def write_table(table: dict, path: Path) -> Path:
    """Write atomically (a crash never leaves a half-written table for the server to find)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- command line
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _non_negative(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(v) and v >= 0):
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
        return v
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.profile",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="anything model.load_checkpoint reads")
    src.add_argument("--preset", choices=sorted(PRESETS),
                     help="profile a fresh model of this preset (latency ignores the weights)")
    p.add_argument("--out", type=Path, help="output JSON (default: profiles/<device slug>.json)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--frames", type=_int_list, help="e.g. 4,8,16 (default: native x 0.5,1,2,4)")
    p.add_argument("--pixels", type=_int_list, help="e.g. 56,112 (default: native x 0.5,1,2)")
    p.add_argument("--patches", type=_int_list,
                   help="e.g. 8,16 for every size (default: static-tokens and native patch)")
    p.add_argument("--max-tokens", type=_positive_int,
                   help=f"skip larger configs (default: {MAX_TOKENS_FACTOR}x the native tokens)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1], help="e.g. 1,4 (1 is always run)")
    p.add_argument("--warmup", type=_non_negative(int), default=3)
    p.add_argument("--min-runs", type=_positive_int, default=30)
    p.add_argument("--min-seconds", type=_non_negative(float), default=2.0)
    p.add_argument("--max-runs", type=_positive_int, default=1000)
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-decode", action="store_true", help="skip the decode-cost measurement")
    p.add_argument("--decode-repeats", type=_positive_int, default=3)
    p.add_argument("--decode-seconds", type=_non_negative(float), default=60.0,
                   help="time budget of the decode measurement (its videos' encoding not counted)")
    p.add_argument("--decode-camera", type=Path, metavar="DIR",
                   help="fit on camera- and phone-like clips instead (video.camera."
                        "realistic_set, written to DIR once: ~8 min on 2 cores; ~20 min to "
                        "measure) and report the error on a held-out half, beside the test "
                        "videos' model")
    p.add_argument("--decode-only", action="store_true",
                   help="measure decoding only, into the existing table at --out (its "
                        "configurations kept)")
    p.add_argument("--decode-refit", action="store_true",
                   help="fit the decode model of the table at --out again from the samples "
                        "it stores (no measuring), and its held-out report")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def heldout_table(heldout: Mapping) -> str:
    """The decode models' errors on the held-out camera clips, one line each."""
    lines = ["decode-time predictions on held-out camera clips (|predicted/measured - 1|):",
             f"{'model':<18} {'samples':>7} {'within 25%':>10} {'median':>7} {'p90':>7} "
             f"{'bias':>7}"]
    for name in ("this_model", "test_videos_only"):
        r = heldout[name]
        lines.append(f"{name:<18} {r['samples']:>7} {r['within_25pct']:>10.0%} "
                     f"{r['median_abs_rel_error']:>7.0%} {r['p90_abs_rel_error']:>7.0%} "
                     f"{r['median_rel_error']:>+7.0%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    if args.max_runs < args.min_runs:
        ap.error(f"--max-runs ({args.max_runs}) is smaller than --min-runs ({args.min_runs})")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        ap.error(f"--device: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        try:
            net = load_checkpoint(args.checkpoint, map_location=device)
        except CheckpointError as e:
            ap.error(f"--checkpoint: {e}")
        source = str(args.checkpoint)
    else:
        net = build_model(args.preset).eval()
        source = f"preset:{args.preset} (fresh weights)"
    cfg = net.config
    configs, skipped = make_grid(cfg, args.frames, args.pixels, args.patches, args.max_tokens)
    if not configs:
        ap.error("every configuration of the grid was skipped: "
                 + "; ".join(f"{s['frames']}f {s['pixels']}px p{s['patch']}: {s['reason']}"
                             for s in skipped[:5]))
    out = args.out or default_profile_path(device)
    if (args.decode_only or args.decode_refit) and args.no_decode:
        ap.error("--decode-only/--decode-refit and --no-decode leave nothing to do")
    if args.decode_refit:
        try:
            existing = ProfileTable.load(out).to_dict()
            decode = fit_decode(existing["decode_model"] or {})
        except (ProfileError, KeyError, ValueError) as e:
            ap.error(f"--decode-refit needs a table with decode samples at --out: {e}")
        existing["decode_model"] = decode
        existing["meta"]["decode_refit_command"] = ("python -m serving.profile "
                                                    + shlex.join(argv))
        if "heldout" in decode:
            print(heldout_table(decode["heldout"]))
        write_table(existing, out)
        print(f"refitted the decode model of {out}")
        return 0
    if args.decode_only:
        try:
            existing = ProfileTable.load(out).to_dict()
        except ProfileError as e:
            ap.error(f"--decode-only needs a table at --out: {e}")
        configs = [(c["frames"], c["pixels"], c["patch"]) for c in existing["configs"]]

    decode = None
    if not args.no_decode:
        pixels = sorted({px for _, px, _ in configs})
        decode = profile_decode(sorted({t for t, _, _ in configs}),
                                sorted({pixels[0], pixels[-1]}), repeats=args.decode_repeats,
                                budget_s=args.decode_seconds, show_progress=not args.quiet,
                                camera_dir=args.decode_camera)
        if "heldout" in decode:
            print(heldout_table(decode["heldout"]))
    if args.decode_only:
        existing["decode_model"] = decode
        existing["meta"]["decode_command"] = "python -m serving.profile " + shlex.join(argv)
        write_table(existing, out)
        print(f"wrote the decode model into {out}")
        return 0
    table = build_table(
        net, configs, device=device, batch_sizes=args.batch_sizes, warmup=args.warmup,
        min_runs=args.min_runs, min_seconds=args.min_seconds, max_runs=args.max_runs,
        decode_model=decode, show_progress=not args.quiet,
        meta={"command": "python -m serving.profile " + shlex.join(argv), "checkpoint": source,
              "max_tokens": (args.max_tokens if args.max_tokens is not None
                             else MAX_TOKENS_FACTOR * native_tokens(cfg)),
              "skipped": skipped})
    write_table(table, out)
    fit = (decode or {}).get("fit", {})
    print(f"wrote {out}: {len(configs)} configurations on {table['meta']['device']}"
          + (f"; decode model median abs error {fit['median_abs_rel_error']:.1%}" if fit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
