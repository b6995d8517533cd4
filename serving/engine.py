"""The inference engine behind the server, free of HTTP and of BentoML: load the checkpoint and
the profile table (or measure a quick one), warm up every configuration, then take requests
whose video is probed and hand them to the scheduler, which decodes and runs them.

    engine = Engine.start(Settings.from_env())          # load + warm up (minutes at most)
    answer = engine.classify("clip.mp4", Options(budget_ms=50))   # the JSON body, in this thread
    # or, split the way the server does it:
    info, probe_s = engine.probe(path)
    request, future = engine.submit(path, info, options, arrival=t0, stages_ms={...},
                                    probe_s=probe_s)
    answer = future.result()            # or a ServiceError / VideoError raised

The path of a request (docs/design.md sections 2 and 6): probe (serving.stages) -> the candidate
configurations with each stage's predicted time for this video (serving.predict) -> the
scheduler (serving.scheduler, driven by serving.runner) chooses when and at which
configuration it is decoded and run (serving.stages) -> the answer (serving.response).
`budget_ms` is end to end: the scheduler's deadline counts from the request's arrival, so the
upload, the probe and every wait count against it. A strict budget that cannot be met is
refused with `BudgetInfeasible` (422) as soon as that is known.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model import load_checkpoint
from video import DECODE_MODES, Limits, VideoInfo, preprocess
from video.isolation import make_decoder

from . import devices
from .correction import LatencyCorrector
from .decode_cost import DecodeModel, keyframe_mode_applies, video_meta, write_test_video
from .errors import BadParameters
from .options import Options
from .predict import Predictor
from .response import answer, gflops_refusal, refusal, rounded
from .runner import Runner
from .scheduler import Infeasible, Policy, Request, Scheduler
from .selector import Key, Option, ProfiledConfig, ProfileTable, decode_value, within_gflops
from .settings import Settings, SettingsError
from .stages import Job, Stages
from .tables import (QuickProfile, model_fingerprint, quick_decode_model, reconcile,
                     resolve_table)

log = logging.getLogger("stretchysnake.serving")
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
        if labels:
            return list(labels)
        log.warning("the checkpoint carries no class names (public .pth files do not): labels "
                    "are the class indices 0-%d; set STRETCHYSNAKE_LABELS to a JSON list or a "
                    "file of one name per line", n - 1)
        return [str(i) for i in range(n)]
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


# ----------------------------------------------------------------------------- settings
def model_threads(settings: Settings, device: torch.device) -> int:
    """STRETCHYSNAKE_THREADS, else: on a CPU, half the cores when decoding runs beside the
    model (a team of threads that spins while decoders hold the other cores makes a forward
    up to 4x slower: 8 x 56 px / patch 28 took 12-24 ms under load with 2 threads on 2 cores,
    5 ms alone), all of them when nothing does (fifo); on a GPU, torch's default."""
    if settings.threads:
        return settings.threads
    if device.type != "cpu":
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    return cores if settings.scheduler == "fifo" else max(1, cores // 2)


def policy_for(settings: Settings, device: torch.device) -> Policy:
    """The scheduler's policy from the settings (batching by default on CUDA only)."""
    batch = settings.max_batch or (8 if device.type == "cuda" else 1)
    urgent = settings.urgent_slots if settings.decode_isolation == "process" else 0
    return Policy(name=settings.scheduler, decode_slots=settings.decode_slots, max_batch=batch,
                  urgent_slots=0 if settings.scheduler == "fifo" else urgent,
                  shared_cores=device.type == "cpu", margin_ms=settings.deadline_margin_ms,
                  default_deadline_ms=settings.default_deadline_ms,
                  age_bound_ms=settings.age_bound_ms)


class Engine:
    def __init__(self, net, labels: list[str], table: ProfileTable, decode_model: DecodeModel,
                 *, device: torch.device, limits: Limits, source: str = "",
                 notes: list[str] | None = None, corrector: LatencyCorrector | None = None,
                 decoder=None, background_decoder=None, policy: Policy = Policy(),
                 on_change=None):
        self.net = net.eval()
        self.labels = list(labels)
        self.table = table
        self.decode_model = decode_model
        self.device = device
        self.limits = limits
        self.source = source
        self.notes = list(notes or [])
        self.corrector = corrector or LatencyCorrector()
        self.decoder = decoder if decoder is not None else make_decoder("inline")
        self.background_decoder = background_decoder  # niced decoding processes, or None
        self.policy = policy
        self._on_change = on_change
        self.configs: dict[Key, ProfiledConfig] = {c.key: c for c in table.configs}
        self.preprocess_ms: dict[Key, float] = {}   # warm-up measurement per configuration
        self.warm_model_ms: dict[Key, float] = {}
        self.ready = False
        # decode_value per (configuration, decode mode); None: that mode is not offered
        self.values: dict[tuple[Key, str], float | None] = {}
        self.predictor: Predictor | None = None
        self.stages: Stages | None = None
        self.runner: Runner | None = None

    # -- startup
    @classmethod
    def load(cls, settings: Settings, quick: QuickProfile = QuickProfile(),
             on_change=None) -> Engine:
        """Checkpoint, labels, device, profile table and decode model; not warmed up yet."""
        settings.check_checkpoint()
        try:
            device = devices.resolve_device(settings.device)
        except ValueError as e:
            raise SettingsError(f"STRETCHYSNAKE_DEVICE: {e}") from None
        torch.set_num_threads(model_threads(settings, device))
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
        policy = policy_for(settings, device)
        memory = settings.decode_memory_mb << 20
        # one decoding process per decode slot, and one more for probes; with urgent slots, the
        # decode slots' processes run niced in a pool of their own (the background lane)
        background = None
        if policy.urgent_slots:
            background = make_decoder(settings.decode_isolation, memory,
                                      processes=policy.decode_slots, nice=settings.decode_nice)
            background.start()
        decoder = make_decoder(settings.decode_isolation, memory,
                               processes=(policy.urgent_slots or policy.decode_slots) + 1)
        decoder.start()  # decoding processes start in the background, beside the warm-up
        return cls(net, labels, table, decode, device=device, limits=limits, source=source,
                   notes=notes, decoder=decoder, background_decoder=background, policy=policy,
                   on_change=on_change)

    @classmethod
    def start(cls, settings: Settings, quick: QuickProfile = QuickProfile(),
              warmup_runs: int = 2, on_change=None) -> Engine:
        """Load, warm up and start taking requests. `on_change(scheduler)`: called after every
        scheduling event (the queue-depth metrics)."""
        engine = cls.load(settings, quick, on_change)
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
        self._start_scheduling()
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

    def _start_scheduling(self) -> None:
        self.values = {(k, mode): decode_value(c, self.table, mode)
                       for k, c in self.configs.items() for mode in DECODE_MODES}
        self.predictor = Predictor(self.table, self.decode_model, self.preprocess_ms,
                                   self.corrector)
        self.stages = Stages(self.net, self.labels, self.device, self.decoder, self.limits,
                             self.predictor, background=self.background_decoder)
        predictor = self.predictor
        scheduler = Scheduler(self.policy, batch_ms=lambda o, n: predictor.batch_ms(
            o.key, n, o.model_ms))
        self.runner = Runner(scheduler, self.stages.decode, self.stages.model,
                             on_change=self._on_change)

    # -- one request
    def probe(self, path) -> tuple[VideoInfo, float]:
        """The video's metadata (no decoding), and the seconds it took."""
        return self.stages.probe(path)

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

    def offers(self, info: VideoInfo, options: Options) -> list[tuple[Key, str, float]]:
        """(configuration, decode mode, value) of every option for this video: each candidate
        decoded exactly, and by keyframes where every sampling segment holds one and the
        mode's value is known (`decode_value`). `decode` given: that mode only (keyframes
        then wherever asked, valued as exact where unmeasured)."""
        meta = video_meta(info)
        offers = []
        for key in self.candidates(options):
            for mode in (options.decode,) if options.decode else DECODE_MODES:
                value = self.values[key, mode]
                if options.decode:
                    value = value if value is not None else self.values[key, "exact"]
                elif value is None or (mode != "exact"
                                       and not keyframe_mode_applies(meta, key[0])):
                    continue
                offers.append((key, mode, value))
        return offers

    def submit(self, path, info: VideoInfo, options: Options, *, arrival: float,
               stages_ms: dict, probe_s: float) -> tuple[Request, concurrent.futures.Future]:
        """Queue a probed request; the future gives its JSON answer. `arrival`: its arrival
        (time.perf_counter()); `stages_ms`: what was measured before (upload, probe). Raises
        BadParameters, or BudgetInfeasible for a strict budget that cannot be met now."""
        offers = self.offers(info, options)
        predicted = self.predictor.predict_all(info, [(key, mode) for key, mode, _ in offers])
        every = []
        for key, mode, value in offers:
            p = predicted[key, mode]
            every.append(Option(key, value, self.configs[key].gflops, p.decode + p.preprocess,
                                p.model, mode))
        allowed, gflops_ok = within_gflops(every, options.budget_gflops)
        if not gflops_ok and options.strict:
            raise gflops_refusal(options, allowed[0].gflops)
        job = Job(Path(path), info, options, arrival, probe_s, dict(stages_ms), predicted,
                  within_gflops=gflops_ok)
        request = Request(arrival * 1e3, allowed, options.budget_ms, options.strict, job)
        try:
            inner = self.runner.submit(request)
        except Infeasible as e:
            raise refusal(e.refusal, options) from None
        outer: concurrent.futures.Future = concurrent.futures.Future()

        def done(f: concurrent.futures.Future) -> None:
            if f.cancelled():
                outer.cancel()
            elif isinstance(f.exception(), Infeasible):
                outer.set_exception(refusal(f.exception().refusal, options))
            elif f.exception() is not None:
                outer.set_exception(f.exception())
            else:
                outer.set_result(answer(request, self.configs, self.policy.name,
                                        time.perf_counter()))
        inner.add_done_callback(done)
        return request, outer

    def cancel(self, request: Request) -> None:
        """The client went away: drop the request if it has not started."""
        self.runner.cancel(request)

    def classify(self, source, options: Options = Options()) -> dict:
        """The whole path in the calling thread (scripts, tests): probe, submit, wait."""
        arrival = time.perf_counter()
        info, probe_s = self.probe(source)
        _, future = self.submit(source, info, options, arrival=arrival,
                                stages_ms={"probe": probe_s * 1e3}, probe_s=probe_s)
        return future.result()

    def close(self) -> None:
        """Stop the threads and the decoding processes."""
        if self.runner is not None:
            self.runner.close()
        self.decoder.close()
        if self.background_decoder is not None:
            self.background_decoder.close()

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
                           "model": rounded(self.warm_model_ms.get(k)),
                           "preprocess": rounded(self.preprocess_ms.get(k))}
                          for k in sorted(self.configs)],
            "corrections": self.corrector.snapshot(),
            "scheduler": {**dataclasses.asdict(self.policy),
                          "queue": self.runner.scheduler.depth() if self.runner else None},
            "limits": dataclasses.asdict(self.limits),
            "decoding": self._decoding_view(),
            "table": self.table.to_dict(),
        }

    def _decoding_view(self) -> dict:
        """The decoding processes: totals over the pools, and each pool (probes and urgent
        decodes at normal priority; the decode slots' niced pool when there is one)."""
        pools = [("probes and urgent decodes" if self.background_decoder is not None
                  else "probes and decodes", self.decoder)]
        if self.background_decoder is not None:
            pools.append(("background decodes", self.background_decoder))
        view = {"isolation": self.decoder.isolation,
                "memory_bytes": getattr(self.decoder, "memory_bytes", None)}
        if self.decoder.isolation != "process":
            return {**view, "processes": None, "restarts": None, "recycled": None}
        for field in ("processes", "restarts", "recycled"):
            view[field] = sum(getattr(pool, field) for _, pool in pools)
        view["pools"] = [{"for": name, "processes": pool.processes, "nice": pool.nice,
                          "restarts": pool.restarts, "recycled": pool.recycled}
                         for name, pool in pools]
        return view


__all__ = ["Engine", "EngineError", "load_labels", "model_threads", "policy_for"]
