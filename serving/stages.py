"""The stages one request passes through, as plain functions of the request: probe (before it
is queued), then decode (+ preprocess) and model (the two the scheduler orders and overlaps).

    stages = Stages(net, labels, device, decoder, limits, predictor)
    info, probe_s = stages.probe(path)
    stages.decode(request)        # request.payload.input, .ms["decode"], .ms["preprocess"]
    stages.model(batch)           # each payload's .labels and .ms["model"]

Every stage reports what it took to the predictor, which corrects later predictions online.
Decoding goes through `decoder`: a `video.isolation.DecodePool` by default, whose processes are
killed past `limits.max_decode_s` and limited in memory; `max_decode_s` bounds a request's
decoding as a whole, so decode gets what the probe left (a tenth of it at least, so that its
error names a sensible limit).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from video import DecodeStats, Limits, VideoInfo, preprocess

from .options import Options
from .predict import Predictor, StageTimes
from .scheduler import Request
from .selector import Key


@dataclasses.dataclass(eq=False)
class Job:
    """One request's data through the stages: the scheduler's `Request.payload`."""

    path: Path
    info: VideoInfo
    options: Options
    arrival: float                      # time.perf_counter() seconds
    probe_s: float                      # what opening the video took (counts against decoding)
    stages_ms: dict                     # measured before the scheduler: upload, probe
    predicted: dict[tuple[Key, str], StageTimes]  # per candidate (configuration, decode mode)
    within_gflops: bool = True          # False: no configuration fits budget_gflops
    input: torch.Tensor | None = None   # the preprocessed clip, between decode and model
    labels: list | None = None          # [{"label", "score"}], top-k
    ms: dict = dataclasses.field(default_factory=dict)   # decode, preprocess, model
    stats: DecodeStats = dataclasses.field(default_factory=DecodeStats)


class Stages:
    def __init__(self, net, labels: list[str], device: torch.device, decoder, limits: Limits,
                 predictor: Predictor, background=None):
        self.net, self.labels, self.device = net, list(labels), device
        self.decoder, self.limits, self.predictor = decoder, limits, predictor
        # the scheduler's background lane: decoding processes that yield the cores (niced)
        self.background = background if background is not None else decoder

    def probe(self, path) -> tuple[VideoInfo, float]:
        """The video's metadata, and the seconds it took."""
        t0 = time.perf_counter()
        info = self.decoder.probe(path, self.limits)
        return info, time.perf_counter() - t0

    def decode_limits(self, probe_s: float) -> Limits:
        total = self.limits.max_decode_s
        if total is None or probe_s <= 0:
            return self.limits
        return dataclasses.replace(self.limits, max_decode_s=max(total - probe_s, total / 10))

    def decode(self, request: Request) -> None:
        job: Job = request.payload
        frames, pixels, _ = key = request.option.key
        mode = request.option.decode
        t0 = time.perf_counter()
        decoder = self.background if request.lane == "background" else self.decoder
        raw = decoder.decode_frames(job.path, frames, short_side=pixels, info=job.info,
                                    limits=self.decode_limits(job.probe_s), stats=job.stats,
                                    decode_mode=mode)
        t1 = time.perf_counter()
        job.input = preprocess(raw, pixels)[None]
        t2 = time.perf_counter()
        job.ms["decode"], job.ms["preprocess"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        # A niced decode takes what urgent work leaves it: its time says nothing about the
        # decode of a request that cannot wait, which is what the predictions are for.
        niced = decoder is not self.decoder
        self.predictor.observe(job.info, key, decode_ms=None if niced else job.ms["decode"],
                               preprocess_ms=job.ms["preprocess"], decode=mode)

    def model(self, batch: Sequence[Request]) -> None:
        """One forward for the batch (its requests share a configuration)."""
        key = batch[0].option.key
        jobs: list[Job] = [r.payload for r in batch]
        t0 = time.perf_counter()
        x = torch.cat([j.input for j in jobs]).to(self.device)
        with torch.inference_mode():
            probs = self.net(x, patch=key[2]).float().softmax(-1)
            k = min(max(j.options.top_k for j in jobs), probs.shape[-1])
            scores, idx = probs.topk(k)
            scores, idx = scores.cpu().tolist(), idx.cpu().tolist()
        ms = (time.perf_counter() - t0) * 1e3
        for j, s, i in zip(jobs, scores, idx):
            n = min(j.options.top_k, k)
            j.labels = [{"label": self.labels[c], "score": round(v, 6)}
                        for v, c in zip(s[:n], i[:n])]
            j.ms["model"] = ms
            j.input = None
        self.predictor.observe(jobs[0].info, key, model_ms=ms, batch=len(batch))
