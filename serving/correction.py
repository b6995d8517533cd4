"""Online correction of latency predictions from what requests actually took (docs/design.md
section 6): the profile table was measured once, on an idle machine; the machine a request runs
on may be busier, throttled or faster.

Each stage keeps a window of recent ratios observed / baseline and predicts
`max(baseline, floor_ms) x scale`, robustly, so that one outlier cannot multiply every later
prediction:

- the ratio is taken against the baseline floored at `floor_ms` (1 ms): a sub-millisecond
  stage (preprocess, 0.2 ms at warm-up) turned a single 8 ms hiccup into a ratio of 40 before;
  against the floor it is 8, and the typical ratio stays what it was;
- the scale is the window's median, or for the stages that vary from video to video (decode,
  preprocess) its 75th percentile bounded by twice the median, and only once the window holds
  `tail_samples` ratios: one outlier moves neither;
- until a stage has `min_samples` observations its scale is 1, and every scale is clamped to
  [`low`, `high`].

The stages: model, per configuration (observed / the profile's p50; the scale multiplies the
profile's p95, so the prediction stays a p95 of the current machine; a configuration with fewer
than `min_samples` observations borrows the scale of all configurations: a slower machine is
slower for every configuration); decode (observed / the DecodeModel's prediction, over all
videos); preprocess (observed / the warm-up measurement of that configuration).
Thread-safe. Standard library only.
"""
from __future__ import annotations

import collections
import math
import statistics
import threading

Key = tuple[int, int, int]


def quantile(values, q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class StageCorrection:
    """The online correction of one stage (see the module docstring). Not locked itself."""

    def __init__(self, window: int = 64, min_samples: int = 3, q: float = 0.5,
                 tail_samples: int = 8, floor_ms: float = 1.0, low: float = 0.1,
                 high: float = 50.0):
        self.ratios: collections.deque = collections.deque(maxlen=window)
        self.min_samples, self.q, self.tail_samples = min_samples, q, tail_samples
        self.floor_ms, self.low, self.high = floor_ms, low, high
        self._scale: float | None = None  # computed once per observation, read per prediction
        self._fresh = True

    def observe(self, observed_ms: float, baseline_ms: float) -> None:
        if not (math.isfinite(observed_ms) and math.isfinite(baseline_ms)) or baseline_ms <= 0 \
                or observed_ms < 0:
            return
        self.ratios.append(max(observed_ms, 1e-6) / max(baseline_ms, self.floor_ms))
        self._fresh = False

    @property
    def samples(self) -> int:
        return len(self.ratios)

    def scale(self) -> float | None:
        """None until `min_samples` ratios have been seen."""
        if not self._fresh:
            self._scale, self._fresh = self._compute(), True
        return self._scale

    def _compute(self) -> float | None:
        if len(self.ratios) < self.min_samples:
            return None
        median = statistics.median(self.ratios)
        s = median
        if self.q > 0.5 and len(self.ratios) >= self.tail_samples:
            s = min(quantile(self.ratios, self.q), 2 * median)
        return min(self.high, max(self.low, s))

    def predict(self, baseline_ms: float, scale: float | None = None) -> float:
        scale = self.scale() if scale is None else scale
        if scale is None:
            return baseline_ms
        return max(baseline_ms, self.floor_ms) * scale


class LatencyCorrector:
    def __init__(self, window: int = 64, min_samples: int = 3, floor_ms: float = 1.0,
                 low: float = 0.1, high: float = 50.0):
        self.window, self.min_samples = window, min_samples
        self._stage = lambda q: StageCorrection(window, min_samples, q, floor_ms=floor_ms,
                                                low=low, high=high)
        self._lock = threading.Lock()
        self._model: dict[Key, StageCorrection] = {}
        self._model_all = self._stage(0.5)
        self._decode = self._stage(0.75)
        self._preprocess = self._stage(0.75)

    # -- observations
    def observe_model(self, key: Key, observed_ms: float, profiled_p50_ms: float) -> None:
        with self._lock:
            own = self._model.setdefault(tuple(key), self._stage(0.5))
            own.observe(observed_ms, profiled_p50_ms)
            self._model_all.observe(observed_ms, profiled_p50_ms)

    def observe_decode(self, observed_ms: float, predicted_ms: float) -> None:
        with self._lock:
            self._decode.observe(observed_ms, predicted_ms)

    def observe_preprocess(self, observed_ms: float, baseline_ms: float) -> None:
        with self._lock:
            self._preprocess.observe(observed_ms, baseline_ms)

    # -- predictions
    def model_ms(self, key: Key, profiled_p95_ms: float) -> float:
        with self._lock:
            own = self._model.get(tuple(key))
            scale = own.scale() if own is not None else None
            if scale is None:
                scale = self._model_all.scale()
            stage = own or self._model_all
            return stage.predict(profiled_p95_ms, scale)

    def decode_ms(self, predicted_ms: float) -> float:
        with self._lock:
            return self._decode.predict(predicted_ms)

    def preprocess_ms(self, baseline_ms: float) -> float:
        with self._lock:
            return self._preprocess.predict(baseline_ms)

    def snapshot(self) -> dict:
        """What GET /profile shows: samples and scales per stage and configuration."""
        def scale(stage):
            s = stage.scale()
            return None if s is None else round(s, 4)
        with self._lock:
            return {
                "window": self.window, "min_samples": self.min_samples,
                "decode": {"samples": self._decode.samples, "scale": scale(self._decode)},
                "preprocess": {"samples": self._preprocess.samples,
                               "scale": scale(self._preprocess)},
                "model_all": {"samples": self._model_all.samples,
                              "scale": scale(self._model_all)},
                "model": [{"frames": k[0], "pixels": k[1], "patch": k[2],
                           "samples": s.samples, "scale": scale(s)}
                          for k, s in sorted(self._model.items())],
            }
