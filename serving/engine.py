"""The inference engine behind the server, free of HTTP and of BentoML: load the checkpoint and
the profile table (or measure a quick one), warm up every configuration, then per request
select a configuration under the budget, decode, preprocess, run the network, and report what
each stage took beside what was predicted.

    engine = Engine.start(Settings.from_env())          # load + warm up (minutes at most)
    result = engine.classify("clip.mp4", Options(budget_ms=50))
    # or, split the way the server does it (probe before queueing, select after):
    info = engine.probe(path)
    result = engine.serve(path, info, options, arrival=t0, stages={"upload": ..., ...})

Budgets (DESIGN.md section 6). `budget_ms` is end to end: the time already spent on the request
when the configuration is chosen (reading the upload, probing, waiting for the model) plus the
predicted decode, preprocess and model time of each candidate configuration:

- decode: `DecodeModel.predict_ms` from the probed metadata (frames and short side of the
  candidate), times the online decode scale;
- preprocess: measured per configuration at warm-up, times the online preprocess scale;
- model: the profile's p95, times the online per-configuration scale (`LatencyCorrector`).

The selector (`serving.selector.select`) takes one decode prediction for all configurations, but
decode cost depends on the candidate's frames and pixels; so each candidate's whole
decode + preprocess + model prediction is folded into its `latency_scale` (scale = predicted
total / p95) and `predicted_decode_ms` is 0. The selector's "ms" of a configuration is then its
predicted time from now to the end, which is what the budget bounds.

Infeasible budgets: the cheapest configuration runs and `budget.met` is false, or, with
`strict`, `BudgetInfeasible` (422) names the smallest budget that would have been feasible.

Decoding (probe and decode) goes through `engine.decoder`: by default a `video.isolation.DecodePool`
whose child processes are killed past `max_decode_s` and limited in memory, so that a hostile
file cannot hang or exhaust the worker; `STRETCHYSNAKE_DECODE_ISOLATION=inline` decodes in the
worker. `max_decode_s` bounds a request's decoding as a whole: decode gets what the probe left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import statistics
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import torch

from model import load_checkpoint
from video import DecodeStats, Limits, VideoInfo, preprocess
from video.isolation import InlineDecoder, make_decoder

from . import profile as prof
from .correction import LatencyCorrector
from .decode_cost import DecodeModel, write_test_video
from .errors import BadParameters, BudgetInfeasible
from .options import Options
from .selector import ProfiledConfig, ProfileTable, Selection, select
from .settings import Settings, SettingsError
from .tables import (QuickProfile, model_fingerprint, quick_decode_model, reconcile,
                     resolve_table)

log = logging.getLogger("stretchysnake.serving")
Key = tuple[int, int, int]
AXES = ("frames", "pixels", "patch")


class EngineError(RuntimeError):
    """The engine cannot start (bad checkpoint, labels, profile, or nothing warms up)."""


# ----------------------------------------------------------------------------- loading helpers
def load_labels(path: Path | None, net) -> list[str]:
    n = net.config.num_classes
    if n < 1:
        raise EngineError("the checkpoint has no classification head (num_classes=0): "
                          "the server needs one")
    if path is None:
        labels = getattr(net, "labels", None)
        return list(labels) if labels else [str(i) for i in range(n)]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise EngineError(f"cannot read labels file {path}: {e.strerror or e}") from None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise EngineError(f"labels file {path}: expected a JSON list of names or one name per line")
    if len(labels) != n:
        raise EngineError(f"labels file {path} has {len(labels)} names for a head with {n} classes")
    return labels


# ----------------------------------------------------------------------------- per request
@dataclasses.dataclass(frozen=True)
class Plan:
    """The configuration chosen for one request and the predictions it was chosen on."""

    config: ProfiledConfig
    selection: Selection
    spent_ms: float                # end-to-end time already spent when selecting
    predicted: dict                # ms: decode, preprocess, model, total (total from arrival)
    decode_raw_ms: float           # the DecodeModel's prediction before the online scale
    candidates: int

    @property
    def feasible(self) -> bool:
        return self.selection.feasible


def _r(v: float | None, nd: int = 3):
    return None if v is None else round(float(v), nd)


def config_dict(c: ProfiledConfig) -> dict:
    return {"frames": c.frames, "pixels": c.pixels, "patch": c.patch, "tokens": c.tokens}


def video_dict(info: VideoInfo) -> dict:
    return {"duration_s": _r(info.duration_s), "fps": _r(info.fps), "width": info.width,
            "height": info.height, "codec": info.codec, "container": info.container,
            "size_bytes": info.size_bytes}


class Engine:
    def __init__(self, net, labels: list[str], table: ProfileTable, decode_model: DecodeModel,
                 *, device: torch.device, limits: Limits, source: str = "",
                 notes: list[str] | None = None, corrector: LatencyCorrector | None = None,
                 decoder=None):
        self.net = net.eval()
        self.labels = list(labels)
        self.table = table
        self.decode_model = decode_model
        self.device = device
        self.limits = limits
        self.source = source
        self.notes = list(notes or [])
        self.corrector = corrector or LatencyCorrector()
        self.decoder = decoder if decoder is not None else InlineDecoder()
        self._opening_s = weakref.WeakKeyDictionary()  # VideoInfo -> seconds its probe took
        self.configs = {c.key: c for c in table.configs}
        self.preprocess_ms: dict[Key, float] = {}   # warm-up measurement per configuration
        self.warm_model_ms: dict[Key, float] = {}
        self.ready = False
        self._forward_lock = threading.Lock()

    # -- startup
    @classmethod
    def load(cls, settings: Settings, quick: QuickProfile = QuickProfile()) -> Engine:
        """Checkpoint, labels, device, profile table and decode model; not warmed up yet."""
        settings.check_checkpoint()
        try:
            device = prof.resolve_device(settings.device)
        except ValueError as e:
            raise SettingsError(f"STRETCHYSNAKE_DEVICE: {e}") from None
        if settings.threads:
            torch.set_num_threads(settings.threads)
        t0 = time.perf_counter()
        net = load_checkpoint(settings.checkpoint, map_location=device)
        labels = load_labels(settings.labels, net)
        cfg = net.config
        log.info("loaded %s: %d classes, embed_dim %d, depth %d, native %d frames x %d px, "
                 "patch %d, on %s in %.1f s", settings.checkpoint, cfg.num_classes, cfg.embed_dim,
                 cfg.depth, cfg.num_frames, cfg.img_size, cfg.patch_size, device,
                 time.perf_counter() - t0)
        table, source = resolve_table(net, settings, device, quick)
        table, notes = reconcile(table, net)
        for n in notes:
            log.warning("profile: %s", n)
        if table.decode_model is not None:
            try:
                decode = DecodeModel.from_dict(table.decode_model)
            except ValueError as e:
                raise EngineError(f"profile {source}: {e}") from None
        else:
            log.warning("profile %s has no decode model: measuring decode cost now (%.0f s)",
                        source, quick.decode_seconds)
            d = quick_decode_model(quick, [c.frames for c in table.configs],
                                   [c.pixels for c in table.configs])
            decode = DecodeModel.from_dict(d)
            table = dataclasses.replace(table, decode_model=d)
            notes.append("decode model measured at startup (the table had none)")
        if not table.has_accuracy:
            notes.append("no accuracy in the profile table: configurations are ranked by GFLOPs "
                         "(most that fit the budget)")
        limits = Limits(max_bytes=settings.max_upload_bytes,
                        max_duration_s=settings.max_duration_s,
                        max_decode_s=settings.max_decode_s)
        decoder = make_decoder(settings.decode_isolation, settings.decode_memory_mb << 20)
        decoder.start()  # decoding processes start in the background, beside the warm-up
        return cls(net, labels, table, decode, device=device, limits=limits, source=source,
                   notes=notes, decoder=decoder)

    @classmethod
    def start(cls, settings: Settings, quick: QuickProfile = QuickProfile(),
              warmup_runs: int = 2) -> Engine:
        engine = cls.load(settings, quick)
        engine.warm_up(warmup_runs, tmpdir=settings.tmpdir)
        return engine

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_up(self, runs: int = 2, tmpdir: Path | None = None) -> None:
        """Run every configuration of the table (flexed weights computed and cached), time
        preprocessing per configuration, and decode once (FFmpeg's first-use cost). A
        configuration that fails is dropped with a warning; ready only when at least one runs."""
        t_start = time.perf_counter()
        rng = np.random.default_rng(0)
        cfg = self.net.config
        for key in list(self.configs):
            frames, pixels, patch = key
            try:
                raw = rng.integers(0, 256, (frames, pixels, max(pixels, round(pixels * 16 / 9)), 3),
                                   dtype=np.uint8)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    x = preprocess(raw, pixels)
                    times.append((time.perf_counter() - t0) * 1e3)
                self.preprocess_ms[key] = statistics.median(times)
                x = x[None].to(self.device)
                with torch.inference_mode():
                    for _ in range(max(1, runs)):
                        t0 = time.perf_counter()
                        out = self.net(x, patch=patch)
                        self._sync()
                        self.warm_model_ms[key] = (time.perf_counter() - t0) * 1e3
                if out.shape != (1, cfg.num_classes):
                    raise RuntimeError(f"unexpected output shape {tuple(out.shape)}")
            except Exception as e:  # noqa: BLE001 - one bad configuration must not stop the rest
                log.warning("warm-up: configuration %s fails on this model, dropped: %s", key, e)
                self.notes.append(f"configuration {key} dropped at warm-up: {e}")
                del self.configs[key]
                self.preprocess_ms.pop(key, None)
                self.warm_model_ms.pop(key, None)
        if not self.configs:
            raise EngineError("no configuration of the profile table runs: "
                              + "; ".join(self.notes))
        self.table = dataclasses.replace(
            self.table, configs=tuple(c for c in self.table.configs if c.key in self.configs))
        self._warm_decode(tmpdir)
        self.ready = True
        log.info("warmed up %d configurations in %.1f s; ready", len(self.configs),
                 time.perf_counter() - t_start)

    def _warm_decode(self, tmpdir: Path | None) -> None:
        directory = Path(tmpdir or tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f"warmup-{os.getpid()}-", suffix=".mp4")
        os.close(fd)
        try:
            write_test_video(Path(name), 64, 0.5)
            info = self.decoder.probe(name, self.limits)
            self.decoder.decode_frames(name, 4, info=info, limits=self.limits,
                                       short_side=min(c.pixels for c in self.configs.values()))
        except Exception as e:  # noqa: BLE001 - a warm-up, not a requirement
            log.warning("decode warm-up failed (ignored): %s", e)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # -- one request
    def probe(self, source) -> VideoInfo:
        t0 = time.perf_counter()
        info = self.decoder.probe(source, self.limits)
        # the time spent decoding, not waiting for a free decoding process
        spent = getattr(self.decoder, "last_call_s", None)
        self._opening_s[info] = spent if spent is not None else time.perf_counter() - t0
        return info

    def decode_limits(self, info: VideoInfo | None = None) -> Limits:
        """The limits for decoding a probed video: `max_decode_s` bounds a request's decoding
        as a whole, probe and decode (a file slow to open is slow to open twice); decode keeps
        a tenth of it at least, so that its error names a sensible limit."""
        total = self.limits.max_decode_s
        spent = self._opening_s.get(info, 0.0) if info is not None else 0.0
        if total is None or spent <= 0:
            return self.limits
        return dataclasses.replace(self.limits, max_decode_s=max(total - spent, total / 10))

    def close(self) -> None:
        """Stop the decoding processes."""
        self.decoder.close()

    def candidates(self, options: Options) -> list[Key]:
        """Configurations matching the explicit frames/pixels/patch overrides (all without)."""
        wanted = options.overrides
        keys = sorted(k for k in self.configs
                      if all(dict(zip(AXES, k))[n] == v for n, v in wanted.items()))
        if not keys:
            avail = "; ".join(f"{n} in {sorted({dict(zip(AXES, k))[n] for k in self.configs})}"
                              for n in wanted)
            combos = ", ".join(f"{t}x{p}px/p{q}" for t, p, q in sorted(self.configs))
            asked = ", ".join(f"{n}={v}" for n, v in wanted.items())
            raise BadParameters([f"no profiled configuration has {asked}; available: {avail} "
                                 f"(configurations: {combos})"])
        return keys

    def predict(self, info: VideoInfo, key: Key) -> tuple[float, float, float, float]:
        """(decode, decode before the online scale, preprocess, model) predicted ms."""
        frames, pixels, _ = key
        raw = max(0.0, self.decode_model.predict_ms(info, frames, pixels))
        decode = raw * self.corrector.decode_scale()
        pre = self.preprocess_ms.get(key, 0.0) * self.corrector.preprocess_scale()
        model = self.configs[key].p95_ms * self.corrector.model_scale(key)
        return decode, raw, pre, model

    def plan(self, info: VideoInfo, options: Options, spent_ms: float) -> Plan:
        keys = self.candidates(options)
        preds = {k: self.predict(info, k) for k in keys}
        scale = {k: max(1e-9, preds[k][0] + preds[k][2] + preds[k][3]) / self.configs[k].p95_ms
                 for k in keys}
        sel = select(self.table, budget_ms=options.budget_ms, budget_gflops=options.budget_gflops,
                     predicted_decode_ms=0.0, spent_ms=max(0.0, spent_ms), latency_scale=scale,
                     candidates=keys)
        k = sel.config.key
        decode, raw, pre, model = preds[k]
        predicted = {"decode": decode, "preprocess": pre, "model": model,
                     "total": spent_ms + decode + pre + model}
        return Plan(sel.config, sel, spent_ms, predicted, raw, len(keys))

    def reason(self, plan: Plan, options: Options) -> str:
        """Why this configuration, in the terms of the budget (the selector's own reason speaks
        of p95 where the engine passed it whole decode + preprocess + model predictions)."""
        c, p = plan.config, plan.predicted
        after = p["decode"] + p["preprocess"] + p["model"]
        parts = []
        if options.budget_ms is not None:
            left = options.budget_ms - plan.spent_ms
            parts.append(f"predicted {after:.1f} ms (decode {p['decode']:.1f} + preprocess "
                         f"{p['preprocess']:.1f} + model p95 {p['model']:.1f}) "
                         f"{'fits' if after <= left else 'exceeds'} the {left:.1f} ms left of "
                         f"budget_ms={options.budget_ms:g}")
        if options.budget_gflops is not None:
            within = "within" if c.gflops <= options.budget_gflops else "over"
            parts.append(f"{c.gflops:.4g} GFLOPs {within} budget_gflops={options.budget_gflops:g}")
        if not parts:
            parts.append("no budget given")
        if not plan.feasible:
            head = "infeasible: the cheapest configuration"
        elif c.accuracy is not None:
            head = f"the most accurate configuration that fits (top-1 {c.accuracy:.4g})"
        else:
            head = ("the configuration with the most GFLOPs that fits (no accuracy known for "
                    "it)")
        return head + ": " + "; ".join(parts)

    def refuse_if_strict(self, plan: Plan, options: Options) -> None:
        """BudgetInfeasible (422) when the plan misses the budget and strict is set, naming the
        smallest budget(s) under which the cheapest configuration would have been chosen."""
        if plan.feasible or not options.strict:
            return
        sel, c = plan.selection, plan.config
        need, detail = [], {"config": config_dict(c), "gflops": c.gflops,
                            "spent_ms": _r(plan.spent_ms)}
        ms = sel.cheapest_feasible_budget_ms
        if ms is not None:
            # rounded up so that asking for exactly this budget would select it
            ms = math.ceil(ms * 10) / 10
            detail["cheapest_feasible_budget_ms"] = ms
            if ms > options.budget_ms:
                need.append(f"budget_ms >= {ms:g} (the cheapest configuration, {c.frames} "
                            f"frames at {c.pixels} px, patch {c.patch}, is predicted to need "
                            f"{plan.predicted['total'] - plan.spent_ms:.1f} ms after the "
                            f"{plan.spent_ms:.1f} ms already spent)")
        gf = sel.cheapest_feasible_budget_gflops
        if gf is not None:
            detail["cheapest_feasible_budget_gflops"] = gf
            if gf > options.budget_gflops:
                need.append(f"budget_gflops >= {gf:.4g} (the cheapest configuration's GFLOPs)")
        asked = ", ".join(f"{n}={v:g}" for n, v in (("budget_ms", options.budget_ms),
                                                  ("budget_gflops", options.budget_gflops))
                          if v is not None)
        if need:
            why = "the cheapest feasible budget is " + " and ".join(need)
        else:  # each budget alone could be met, but no configuration meets both
            why = "no profiled configuration fits both budgets together"
        raise BudgetInfeasible(f"strict budget {asked} cannot be met: {why}", detail=detail)

    def run(self, path, info: VideoInfo, plan: Plan, top_k: int) -> tuple[list, dict, DecodeStats]:
        """Decode, preprocess, forward -> (top-k labels, ms per stage, decode stats)."""
        c = plan.config
        stats = DecodeStats()
        t0 = time.perf_counter()
        raw = self.decoder.decode_frames(path, c.frames, short_side=c.pixels, info=info,
                                         limits=self.decode_limits(info), stats=stats)
        t1 = time.perf_counter()
        x = preprocess(raw, c.pixels)[None]
        t2 = time.perf_counter()
        with self._forward_lock, torch.inference_mode():
            logits = self.net(x.to(self.device), patch=c.patch)
            probs = logits.float().softmax(-1)[0]
            k = min(top_k, probs.numel())
            scores, idx = probs.topk(k)
            scores, idx = scores.cpu().tolist(), idx.cpu().tolist()
        t3 = time.perf_counter()
        labels = [{"label": self.labels[i], "score": round(s, 6)} for s, i in zip(scores, idx)]
        ms = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "model": (t3 - t2) * 1e3}
        return labels, ms, stats

    def observe(self, plan: Plan, ms: dict) -> None:
        c = plan.config
        self.corrector.observe_model(c.key, ms["model"], c.p50_ms)
        self.corrector.observe_decode(ms["decode"], plan.decode_raw_ms)
        if self.preprocess_ms.get(c.key):
            self.corrector.observe_preprocess(ms["preprocess"], self.preprocess_ms[c.key])

    def serve(self, path, info: VideoInfo, options: Options, *, arrival: float,
              stages: dict | None = None, clock=time.perf_counter) -> dict:
        """Select, run and report one request whose video is already probed. `arrival`: the
        request's arrival on `clock`; `stages`: ms already measured (upload, probe, queue)."""
        spent = (clock() - arrival) * 1e3
        plan = self.plan(info, options, spent)
        self.refuse_if_strict(plan, options)
        labels, ms, stats = self.run(path, info, plan, options.top_k)
        total = (clock() - arrival) * 1e3
        self.observe(plan, ms)
        c = plan.config
        met = True
        if options.budget_ms is not None and total > options.budget_ms:
            met = False
        if options.budget_gflops is not None and c.gflops > options.budget_gflops:
            met = False
        timing = {k: _r(v) for k, v in (stages or {}).items()}
        timing.update({k: _r(v) for k, v in ms.items()})
        timing["total"] = _r(total)
        timing["predicted"] = {k: _r(v) for k, v in plan.predicted.items()}
        return {
            "labels": labels,
            "config": config_dict(c),
            "gflops": round(c.gflops, 6),
            "accuracy": c.accuracy,
            "timing_ms": timing,
            "budget": {"ms": options.budget_ms, "gflops": options.budget_gflops, "met": met,
                       "feasible": plan.feasible, "strict": options.strict},
            "selection": {"reason": self.reason(plan, options), "candidates": plan.candidates,
                          "spent_before_selection_ms": _r(plan.spent_ms),
                          "frames_decoded": stats.frames_decoded, "seeks": stats.seeks},
            "video": video_dict(info),
        }

    def classify(self, source, options: Options = Options()) -> dict:
        """The whole pipeline in the calling thread (scripts, tests): probe, select, run."""
        arrival = time.perf_counter()
        info = self.probe(source)
        probe_ms = (time.perf_counter() - arrival) * 1e3
        return self.serve(source, info, options, arrival=arrival, stages={"probe": probe_ms})

    # -- introspection
    def profile_view(self) -> dict:
        """GET /profile: the active table and how the server uses it."""
        cfg = self.net.config
        return {
            "source": self.source,
            "device": str(self.device),
            "ready": self.ready,
            "model": {**cfg.to_dict(), "fingerprint": model_fingerprint(self.net)},
            "classes": len(self.labels),
            "accuracy_known": self.table.has_accuracy,
            "notes": self.notes,
            "warmup_ms": [{"frames": k[0], "pixels": k[1], "patch": k[2],
                           "model": _r(self.warm_model_ms.get(k)),
                           "preprocess": _r(self.preprocess_ms.get(k))}
                          for k in sorted(self.configs)],
            "corrections": self.corrector.snapshot(),
            "limits": dataclasses.asdict(self.limits),
            "decoding": {"isolation": self.decoder.isolation,
                         "memory_bytes": getattr(self.decoder, "memory_bytes", None),
                         "processes": getattr(self.decoder, "processes", None),
                         "restarts": getattr(self.decoder, "restarts", None),
                         "recycled": getattr(self.decoder, "recycled", None)},
            "table": self.table.to_dict(),
        }


__all__ = ["Engine", "EngineError", "Plan", "load_labels"]
