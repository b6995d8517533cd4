"""Predicted time of each stage of one request at one configuration, corrected online.

    predictor = Predictor(table, decode_model, preprocess_ms)
    times = predictor.predict(info, (8, 112, 16))     # StageTimes(decode, preprocess, model)
    times = predictor.predict(info, (8, 112, 16), "keyframe")   # another decode mode
    predictor.observe(info, key, times_measured)      # after the request ran

- decode: `DecodeModel.predict_ms` from the probed metadata (the candidate's frames, short
  side and decode mode), corrected by the decode stage's online scale;
- preprocess: the warm-up measurement of that configuration, corrected online;
- model: the profile's p95 at batch 1, corrected per configuration (`LatencyCorrector`); a
  batch of n: the profile's measurement at n when it has one (linear between measured sizes,
  and per request beyond the largest), else n runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from video import VideoInfo

from .correction import LatencyCorrector
from .decode_cost import DecodeModel
from .selector import Key, ProfiledConfig, ProfileTable


@dataclasses.dataclass(frozen=True)
class StageTimes:
    decode: float
    preprocess: float
    model: float

    @property
    def total(self) -> float:
        return self.decode + self.preprocess + self.model


class Predictor:
    def __init__(self, table: ProfileTable, decode_model: DecodeModel,
                 preprocess_ms: Mapping[Key, float], corrector: LatencyCorrector | None = None):
        self.configs: dict[Key, ProfiledConfig] = {c.key: c for c in table.configs}
        self.decode_model = decode_model
        self.preprocess_baseline = dict(preprocess_ms)
        self.corrector = corrector or LatencyCorrector()

    def raw_decode_ms(self, info: VideoInfo, key: Key, decode: str = "exact") -> float:
        frames, pixels, _ = key
        return max(0.0, self.decode_model.predict_ms(info, frames, pixels, decode))

    def predict(self, info: VideoInfo, key: Key, decode: str = "exact") -> StageTimes:
        return self.predict_all(info, [(key, decode)])[key, decode]

    def predict_all(self, info: VideoInfo,
                    wanted: Sequence[tuple[Key, str]]) -> dict[tuple[Key, str], StageTimes]:
        """`predict` for each (configuration, decode mode) of one video, the decode prediction
        made once per frames, pixels and mode (the patch size does not change decoding)."""
        decode: dict[tuple[int, int, str], float] = {}
        out = {}
        for key, mode in wanted:
            frames, pixels, _ = key
            if (frames, pixels, mode) not in decode:
                decode[frames, pixels, mode] = self.corrector.decode_ms(
                    self.raw_decode_ms(info, key, mode))
            c = self.configs[key]
            out[key, mode] = StageTimes(
                decode[frames, pixels, mode],
                self.corrector.preprocess_ms(self.preprocess_baseline.get(key, 0.0)),
                self.corrector.model_ms(key, c.p95_ms))
        return out

    def batch_ms(self, key: Key, size: int, single_ms: float) -> float:
        """A batch of `size` at `key`, given one request's predicted (corrected) time."""
        if size <= 1:
            return single_ms
        c = self.configs[key]
        measured = {1: c.p95_ms}
        for n, entry in (c.extra.get("batches") or {}).items():
            try:
                measured[int(n)] = float(entry["latency_ms"]["p95"])
            except (KeyError, TypeError, ValueError):
                continue
        sizes = sorted(measured)
        if len(sizes) == 1:
            return single_ms * size
        if size >= sizes[-1]:
            top = sizes[-1]
            ratio = measured[top] / measured[1] * size / top
        else:
            hi = next(n for n in sizes if n >= size)
            lo = max(n for n in sizes if n <= size)
            w = 0 if hi == lo else (size - lo) / (hi - lo)
            ratio = (measured[lo] + w * (measured[hi] - measured[lo])) / measured[1]
        return single_ms * ratio

    def observe(self, info: VideoInfo, key: Key, decode_ms: float | None = None,
                preprocess_ms: float | None = None, model_ms: float | None = None,
                batch: int = 1, decode: str = "exact") -> None:
        """What one request took (a stage left out was not measured)."""
        c = self.configs[key]
        if decode_ms is not None:
            self.corrector.observe_decode(decode_ms, self.raw_decode_ms(info, key, decode))
        if preprocess_ms is not None and self.preprocess_baseline.get(key):
            self.corrector.observe_preprocess(preprocess_ms, self.preprocess_baseline[key])
        if model_ms is not None:
            # a batch's time against the profile's for that size, as a batch of one's
            p50 = self.batch_ms(key, batch, c.p50_ms) if batch > 1 else c.p50_ms
            self.corrector.observe_model(key, model_ms, p50)
