"""Online correction of latency predictions from what requests actually took (DESIGN.md
section 6): the profile table was measured once, on an idle machine; the machine a request runs
on may be busier, throttled or faster.

Each stage keeps a window of recent ratios observed / baseline and turns them into a
multiplicative scale:

- model, per configuration: observed ms / the profile's p50 for that configuration; the scale
  (the window's median) multiplies the profile's p95, so the prediction stays a p95 of the
  current machine. A configuration with fewer than `min_samples` observations borrows the
  median over all configurations (a slower machine is slower for every configuration).
- decode: observed ms / the DecodeModel's prediction, over all videos; the scale is the
  window's 90th percentile (decode time varies between videos more than the model's does, and a
  budget is better kept than missed).
- preprocess: observed ms / the warm-up measurement of that configuration; 90th percentile.

Until a stage has `min_samples` observations its scale is 1. Scales are clamped to
[`low`, `high`] so that one pathological request cannot make every budget infeasible.
Thread-safe. Standard library only.
"""
from __future__ import annotations

import collections
import math
import statistics
import threading

Key = tuple[int, int, int]


def _quantile(values, q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class LatencyCorrector:
    def __init__(self, window: int = 64, min_samples: int = 3, low: float = 0.1,
                 high: float = 50.0):
        self.window, self.min_samples, self.low, self.high = window, min_samples, low, high
        self._lock = threading.Lock()
        self._model: dict[Key, collections.deque] = {}
        self._model_all: collections.deque = collections.deque(maxlen=window)
        self._decode: collections.deque = collections.deque(maxlen=window)
        self._preprocess: collections.deque = collections.deque(maxlen=window)

    def _clamp(self, v: float) -> float:
        return min(self.high, max(self.low, v))

    @staticmethod
    def _ratio(observed: float, baseline: float) -> float | None:
        if not (math.isfinite(observed) and math.isfinite(baseline)) or baseline <= 0 \
                or observed < 0:
            return None
        return max(observed, 1e-6) / baseline

    # -- observations
    def observe_model(self, key: Key, observed_ms: float, profiled_p50_ms: float) -> None:
        r = self._ratio(observed_ms, profiled_p50_ms)
        if r is None:
            return
        with self._lock:
            self._model.setdefault(tuple(key), collections.deque(maxlen=self.window)).append(r)
            self._model_all.append(r)

    def observe_decode(self, observed_ms: float, predicted_ms: float) -> None:
        r = self._ratio(observed_ms, predicted_ms)
        if r is not None:
            with self._lock:
                self._decode.append(r)

    def observe_preprocess(self, observed_ms: float, baseline_ms: float) -> None:
        r = self._ratio(observed_ms, baseline_ms)
        if r is not None:
            with self._lock:
                self._preprocess.append(r)

    # -- scales
    def model_scale(self, key: Key) -> float:
        with self._lock:
            own = self._model.get(tuple(key))
            if own is not None and len(own) >= self.min_samples:
                return self._clamp(statistics.median(own))
            if len(self._model_all) >= self.min_samples:
                return self._clamp(statistics.median(self._model_all))
            return 1.0

    def decode_scale(self) -> float:
        with self._lock:
            if len(self._decode) >= self.min_samples:
                return self._clamp(_quantile(self._decode, 0.9))
            return 1.0

    def preprocess_scale(self) -> float:
        with self._lock:
            if len(self._preprocess) >= self.min_samples:
                return self._clamp(_quantile(self._preprocess, 0.9))
            return 1.0

    def snapshot(self) -> dict:
        """What GET /profile shows: samples and scales per stage and configuration."""
        with self._lock:
            keys = list(self._model)
            counts = {k: len(v) for k, v in self._model.items()}
            decode_n, pre_n = len(self._decode), len(self._preprocess)
        return {
            "window": self.window, "min_samples": self.min_samples,
            "decode": {"samples": decode_n, "scale": round(self.decode_scale(), 4)},
            "preprocess": {"samples": pre_n, "scale": round(self.preprocess_scale(), 4)},
            "model": [{"frames": k[0], "pixels": k[1], "patch": k[2], "samples": counts[k],
                       "scale": round(self.model_scale(k), 4)} for k in sorted(keys)],
        }
