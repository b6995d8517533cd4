"""Profile tables and the budget selector: which (frames, pixels, patch) to run for one request.

A profile table is JSON, one per device (``profiles/NAME.json``)::

    {
      "meta": {"device": str, "threads": int > 0, "torch": str, "date": str, "command": str,
               ...},                                  # more free-form keys allowed
      "configs": [                                    # non-empty, (frames, pixels, patch) unique
        {"frames": int > 0, "pixels": int > 0, "patch": int > 0, "tokens": int > 0,
         "gflops": number > 0,
         "latency_ms": {"p50": number > 0, "p95": number > 0, "p99": number > 0},
                                                      # model time only, batch 1; p50 <= p95 <= p99
         "accuracy": number in [0, 1] or null,        # top-1 from the Pareto benchmark;
                                                      # null or missing = unknown
         ...}                                         # more keys allowed, kept by to_dict()
      ],
      "decode_model": {...}                           # optional (object or null), opaque here
    }                                                 # no other top-level keys (typos fail)

Numbers are finite ints or floats, never bools. A malformed table raises one ``ProfileError``
naming every problem by path, e.g. ``configs[3].latency_ms.p95: must be a positive number, got -1``.
Accuracy: when any config has one, configs without one rank below all configs with one, and among
themselves by GFLOPs (more is better), as in a table with no accuracy at all. Standard library only.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

Key = tuple[int, int, int]  # (frames, pixels, patch)
ACCURACY_TIE = 1e-9  # accuracies this close are equal: the cheaper config wins
_INTS = ("frames", "pixels", "patch", "tokens")
_PCTS = ("p50", "p95", "p99")
_TOP = ("meta", "configs", "decode_model")


class ProfileError(ValueError):
    """A profile table that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, problems: str | Iterable[str], source: str | Path | None = None):
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        where = f" {source}" if source is not None else ""
        super().__init__(f"invalid profile table{where}: " + "; ".join(self.problems))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_pos_num(v, types=(int, float)) -> bool:
    return isinstance(v, types) and _is_num(v) and v > 0


def _is_pos_int(v) -> bool:
    return _is_pos_num(v, int)


def _need(errors: list[str], d: dict, path: str, key: str, ok, what: str) -> None:
    where = f"{path}.{key}" if path else key
    if key not in d:
        errors.append(f"{where}: missing")
    elif not ok(d[key]):
        errors.append(f"{where}: must be {what}, got {d[key]!r}")


_STR = (lambda v: isinstance(v, str), "a string")
_META = {"device": _STR, "threads": (_is_pos_int, "a positive integer"), "torch": _STR,
         "date": _STR, "command": _STR}


def _check_config(c, path: str, errors: list[str]) -> None:
    if not isinstance(c, dict):
        return errors.append(f"{path}: must be an object, got {type(c).__name__}")
    for k in _INTS:
        _need(errors, c, path, k, _is_pos_int, "a positive integer")
    _need(errors, c, path, "gflops", _is_pos_num, "a positive number")
    lat = c.get("latency_ms")
    if not isinstance(lat, dict):
        _need(errors, c, path, "latency_ms", lambda v: False, "an object")
    else:
        for k in _PCTS:
            _need(errors, lat, f"{path}.latency_ms", k, _is_pos_num, "a positive number")
        if all(_is_pos_num(lat.get(k)) for k in _PCTS):
            for lo, hi in zip(_PCTS, _PCTS[1:]):
                if lat[lo] > lat[hi]:
                    errors.append(f"{path}.latency_ms: {lo} {lat[lo]!r} > {hi} {lat[hi]!r}")
    acc = c.get("accuracy")
    if acc is not None and not (_is_num(acc) and 0 <= acc <= 1):
        errors.append(f"{path}.accuracy: must be a number in [0, 1] or null, got {acc!r}")


@dataclass(frozen=True)
class ProfiledConfig:
    frames: int
    pixels: int
    patch: int
    tokens: int
    gflops: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    accuracy: float | None = None
    # Keys the selector does not use, kept so that to_dict() round-trips; not compared or hashed.
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    latency_extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return (self.frames, self.pixels, self.patch)

    @classmethod
    def from_dict(cls, d: dict) -> ProfiledConfig:  # d already validated
        lat = d["latency_ms"]
        acc = d.get("accuracy")
        return cls(*(d[k] for k in _INTS), float(d["gflops"]), *(float(lat[k]) for k in _PCTS),
                   None if acc is None else float(acc),
                   {k: copy.deepcopy(v) for k, v in d.items()
                    if k not in (*_INTS, "gflops", "latency_ms", "accuracy")},
                   {k: copy.deepcopy(v) for k, v in lat.items() if k not in _PCTS})

    def to_dict(self) -> dict:
        return {"frames": self.frames, "pixels": self.pixels, "patch": self.patch,
                "tokens": self.tokens, "gflops": self.gflops,
                "latency_ms": {"p50": self.p50_ms, "p95": self.p95_ms, "p99": self.p99_ms,
                               **copy.deepcopy(self.latency_extra)},
                "accuracy": self.accuracy, **copy.deepcopy(self.extra)}


@dataclass(frozen=True)
class ProfileTable:
    meta: dict
    configs: tuple[ProfiledConfig, ...]
    decode_model: dict | None = None

    @property
    def has_accuracy(self) -> bool:
        """True when any config has an accuracy (those without rank below those with one)."""
        return any(c.accuracy is not None for c in self.configs)

    @classmethod
    def from_dict(cls, d) -> ProfileTable:
        if not isinstance(d, dict):
            raise ProfileError(f"must be a JSON object, got {type(d).__name__}")
        errors = [f"{k}: unknown top-level key (expected {', '.join(_TOP)})"
                  for k in d if k not in _TOP]
        meta = d.get("meta")
        if not isinstance(meta, dict):
            _need(errors, d, "", "meta", lambda v: False, "an object")
        else:
            for k, (ok, what) in _META.items():
                _need(errors, meta, "meta", k, ok, what)
        if d.get("decode_model") is not None and not isinstance(d["decode_model"], dict):
            errors.append(f"decode_model: must be an object or null, got {d['decode_model']!r}")
        configs = d.get("configs")
        if not isinstance(configs, list) or not configs:
            _need(errors, d, "", "configs", lambda v: False, "a non-empty list")
            configs = []
        seen: dict[Key, int] = {}
        for i, c in enumerate(configs):
            _check_config(c, f"configs[{i}]", errors)
            if isinstance(c, dict) and all(_is_pos_int(c.get(k)) for k in _INTS[:3]):
                key = (c["frames"], c["pixels"], c["patch"])
                if key in seen:
                    errors.append(f"configs[{i}]: duplicate (frames, pixels, patch) {key} "
                                  f"of configs[{seen[key]}]")
                seen.setdefault(key, i)
        if errors:
            raise ProfileError(errors)
        return cls(copy.deepcopy(meta), tuple(ProfiledConfig.from_dict(c) for c in configs),
                   copy.deepcopy(d.get("decode_model")))

    @classmethod
    def load(cls, path: str | Path) -> ProfileTable:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ProfileError(f"cannot read file ({e.strerror or e})", path) from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"not valid JSON ({e})", path) from e
        try:
            return cls.from_dict(d)
        except ProfileError as e:
            raise ProfileError(e.problems, path) from None

    def to_dict(self) -> dict:
        d = {"meta": copy.deepcopy(self.meta), "configs": [c.to_dict() for c in self.configs]}
        if self.decode_model is not None:
            d["decode_model"] = copy.deepcopy(self.decode_model)
        return d


@dataclass(frozen=True)
class Selection:
    config: ProfiledConfig
    feasible: bool
    predicted_model_ms: float            # p95 times the online correction factor
    predicted_total_ms: float | None     # spent + decode + model; None without budget_ms
    remaining_ms: float | None           # budget_ms - spent - decode: what is left for the model
    reason: str
    # When infeasible: the smallest budget under which the cheapest config would fit, for each
    # budget that was given (each considered alone).
    cheapest_feasible_budget_ms: float | None = None
    cheapest_feasible_budget_gflops: float | None = None


def _arg(name: str, v, *, positive: bool) -> None:
    if not _is_num(v) or (v <= 0 if positive else v < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")


def select(table: ProfileTable, *, budget_ms: float | None = None,
           budget_gflops: float | None = None, predicted_decode_ms: float = 0.0,
           spent_ms: float = 0.0, latency_scale: Mapping[Key, float] | None = None,
           candidates: Iterable[Key] | None = None) -> Selection:
    """The most accurate config that fits the budgets; the cheapest, flagged, when none does."""
    for name, v in (("budget_ms", budget_ms), ("budget_gflops", budget_gflops)):
        if v is not None:
            _arg(name, v, positive=True)
    _arg("predicted_decode_ms", predicted_decode_ms, positive=False)
    _arg("spent_ms", spent_ms, positive=False)
    scale = dict(latency_scale or {})
    for k, f in scale.items():
        if not _is_pos_num(f):
            raise ValueError(f"latency_scale[{k!r}] must be a finite number > 0, got {f!r}")
    configs = table.configs
    if candidates is not None:
        wanted = {tuple(k) for k in candidates}
        unknown = wanted - {c.key for c in configs}
        if unknown:
            raise ValueError("candidates not in the profile table: "
                             + ", ".join(sorted(map(str, unknown))))
        if not wanted:
            raise ValueError("candidates is empty")
        configs = tuple(c for c in configs if c.key in wanted)

    ms = {c.key: c.p95_ms * scale.get(c.key, 1.0) for c in configs}
    overhead = spent_ms + predicted_decode_ms
    remaining = None if budget_ms is None else budget_ms - overhead
    fit = [c for c in configs
           if (budget_ms is None or overhead + ms[c.key] <= budget_ms)
           and (budget_gflops is None or c.gflops <= budget_gflops)]

    def result(c: ProfiledConfig, feasible: bool, reason: str, **cheapest) -> Selection:
        total = None if budget_ms is None else overhead + ms[c.key]
        return Selection(c, feasible, ms[c.key], total, remaining, reason, **cheapest)

    if not fit:  # cheapest by what the caller is short of; the key makes ties deterministic
        by_ms = budget_ms is not None
        c = min(configs, key=lambda c: (ms[c.key], c.gflops, c.tokens, c.key) if by_ms
                else (c.gflops, ms[c.key], c.tokens, c.key))
        needs = []
        if by_ms:
            needs.append(f"needs {ms[c.key]:.1f} ms, {remaining:.1f} ms left")
        if budget_gflops is not None:
            needs.append(f"needs {c.gflops:.3g} GFLOPs, {budget_gflops:.3g} allowed")
        return result(c, False, "infeasible: cheapest configuration, " + "; ".join(needs),
                      cheapest_feasible_budget_ms=overhead + ms[c.key] if by_ms else None,
                      cheapest_feasible_budget_gflops=(min(x.gflops for x in configs)
                                                       if budget_gflops is not None else None))

    known = [c for c in fit if c.accuracy is not None]
    if known:
        best = max(c.accuracy for c in known)
        tier = [c for c in known if c.accuracy >= best - ACCURACY_TIE]
        c = min(tier, key=lambda c: (c.gflops, ms[c.key], c.tokens, c.key))
        fits = []
        if budget_ms is not None:
            fits.append(f"whose p95 {ms[c.key]:.1f} ms fits the {remaining:.1f} ms left")
        if budget_gflops is not None:
            fits.append(f"whose {c.gflops:.3g} GFLOPs fit the {budget_gflops:.3g} GFLOPs budget")
        return result(c, True, f"highest accuracy ({c.accuracy:.4g}) "
                      + (" and ".join(fits) or "with no budget"))
    c = min(fit, key=lambda c: (-c.gflops, ms[c.key], c.tokens, c.key))
    why = ("no fitting configuration has a known accuracy" if table.has_accuracy
           else "no accuracy known")
    return result(c, True, f"{why}: most GFLOPs that fit ({c.gflops:.3g} GFLOPs, "
                  f"p95 {ms[c.key]:.1f} ms)")
