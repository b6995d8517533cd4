"""Profile tables, and choosing among configurations by what their answers are worth.

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
         "accuracy_by_decode": {"keyframe": number in [0, 1] or null},
                                                      # optional: top-1 when decoded in another
                                                      # mode than "exact" (video.decode_frames)
         ...}                                         # more keys allowed, kept by to_dict()
      ],
      "decode_model": {...}                           # optional (object or null), opaque here
    }                                                 # no other top-level keys (typos fail)

Numbers are finite ints or floats, never bools. A malformed table raises one ``ProfileError``
naming every problem by path, e.g. ``configs[3].latency_ms.p95: must be a positive number, got -1``.
Accuracy: when any config has one, configs without one rank below all configs with one, and among
themselves by GFLOPs (more is better), as in a table with no accuracy at all (`option_value`).

Choosing: an `Option` is one configuration as one request would run it, with its predicted
decode and model times for that request's video; `select` asks the question the scheduler
(serving.scheduler) has at each step: given each option's predicted finish, which is the most
valuable one that finishes by the deadline (and, under load, the fastest of those nearly as
valuable). Standard library only.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Key = tuple[int, int, int]  # (frames, pixels, patch)
ACCURACY_TIE = 1e-9  # accuracies this close are equal: the faster config wins
_INTS = ("frames", "pixels", "patch", "tokens")
_PCTS = ("p50", "p95", "p99")
_TOP = ("meta", "configs", "decode_model")
# video.DECODE_MODES past "exact" (the selector imports nothing but the standard library)
OTHER_DECODE_MODES = ("keyframe",)


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
    by_decode = c.get("accuracy_by_decode")
    if by_decode is not None:
        if not isinstance(by_decode, dict):
            errors.append(f"{path}.accuracy_by_decode: must be an object, got {by_decode!r}")
        else:
            for mode, v in by_decode.items():
                if mode not in OTHER_DECODE_MODES:
                    errors.append(f"{path}.accuracy_by_decode.{mode}: unknown decode mode "
                                  f"(known: {', '.join(OTHER_DECODE_MODES)})")
                elif v is not None and not (_is_num(v) and 0 <= v <= 1):
                    errors.append(f"{path}.accuracy_by_decode.{mode}: must be a number in "
                                  f"[0, 1] or null, got {v!r}")


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

    def accuracy_for(self, decode: str) -> float | None:
        """Top-1 when decoded in `decode` mode ("exact": `accuracy`)."""
        if decode == "exact":
            return self.accuracy
        return (self.extra.get("accuracy_by_decode") or {}).get(decode)

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


# ----------------------------------------------------------------------------- choosing
@dataclass(frozen=True, eq=False)  # compared and hashed by identity: dict keys, and cheap
class Option:
    """One configuration as one request would run it: what its answer is worth and what it
    costs, predicted for this request's video."""

    key: Key
    value: float          # option_value(): the accuracy, or a proxy below every known one
    gflops: float
    decode_ms: float      # decode + preprocess
    model_ms: float       # the model at batch 1
    decode: str = "exact"  # how the frames are decoded (video.decode_frames' decode_mode)

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.model_ms


def option_value(config: ProfiledConfig, table: ProfileTable) -> float:
    """What an answer at `config` is worth when ranking: its top-1 accuracy. Configurations
    without one rank below every configuration with one (of 0.001 or more), and among
    themselves by GFLOPs (more is better): value 0.001 x GFLOPs / the table's largest. In a
    table without any accuracy, the model's native configuration (the profiled model's frames,
    pixels and patch) ranks first, value 1: a checkpoint trained at one configuration is known
    to hold there and may fall apart elsewhere; the others follow by GFLOPs (x 0.999)."""
    if config.accuracy is not None:
        return config.accuracy
    if not table.has_accuracy and config.key == native_key(table):
        return 1.0
    share = config.gflops / max(c.gflops for c in table.configs)
    return share * (1e-3 if table.has_accuracy else 0.999)


def decode_value(config: ProfiledConfig, table: ProfileTable, decode: str) -> float | None:
    """option_value() of `config` decoded in `decode` mode, or None when it is not to be
    offered: its measured accuracy in that mode where the table has one; in a table without
    any accuracy, just under the exact mode's value (the same configuration with each frame
    moved within its segment: worth about the same, chosen when it is the one that fits, or
    the faster of two equals under load); else None (a table that measures accuracy does not
    guess it)."""
    if decode == "exact":
        return option_value(config, table)
    measured = config.accuracy_for(decode)
    if measured is not None:
        return measured
    if table.has_accuracy:
        return None
    return option_value(config, table) * (1 - 1e-6)


def native_key(table: ProfileTable) -> Key | None:
    """(frames, pixels, patch) of the model the table was measured on, when it says."""
    model = table.meta.get("model")
    try:
        return int(model["num_frames"]), int(model["img_size"]), int(model["patch_size"])
    except (TypeError, KeyError, ValueError):
        return None


def select(finishes: Mapping[Option, float], deadline: float,
           near: float = ACCURACY_TIE) -> Option | None:
    """The most valuable option predicted to finish by `deadline`; among the options on time
    whose value is within `near` of the best (ACCURACY_TIE: equal values only), the one that
    finishes first, then the one with fewer GFLOPs. None when no option finishes in time.
    `finishes`: each candidate's predicted finish, on the caller's clock."""
    on_time = [o for o, f in finishes.items() if f <= deadline]
    if not on_time:
        return None
    best = max(o.value for o in on_time)
    tier = [o for o in on_time if o.value >= best - max(near, ACCURACY_TIE)]
    return min(tier, key=lambda o: (finishes[o], o.gflops, o.key, o.decode))


def within_gflops(options: Sequence[Option], budget_gflops: float | None
                  ) -> tuple[tuple[Option, ...], bool]:
    """(the options within the GFLOP budget, True), or (the cheapest, False) when none is."""
    if budget_gflops is None:
        return tuple(options), True
    fit = tuple(o for o in options if o.gflops <= budget_gflops)
    if fit:
        return fit, True
    least = min(o.gflops for o in options)
    return tuple(o for o in options if o.gflops == least), False
