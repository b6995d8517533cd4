"""The options of one classify request, parsed from the query string and the form fields.

    POST /classify?budget_ms=50&top_k=3            (query string)
    curl -F video=@clip.mp4 -F budget_ms=50 ...     (form fields; BentoML's client sends these)

Each option is declared once, in SPECS below (name, type, default, parser, schema bounds,
description); the `Options` fields, the parsers, the service's form model, its `classify`
arguments and the OpenAPI query parameters all come from there.

Values are strings as sent; form fields may also be JSON-encoded, as BentoML's client sends
them (`50`, `true`, `"8"`); JSON `null` means "not given". Numbers must be finite (no NaN, no
inf); booleans are true/false, 1/0, yes/no, on/off. Errors: a name that is not an option, a name
repeated within the query string or within the form, and a name given in both with different
values. Every problem is reported at once (`BadParameters`, 422).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable

from video import DECODE_MODES

from .errors import BadParameters
from .settings import parse_flag

DEFAULT_TOP_K = 5


def _positive_number(text: str):
    try:
        v = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    if v <= 0:
        raise ValueError("must be > 0")
    return v


def _positive_int(text: str):
    try:
        v = int(text)
    except ValueError:
        raise ValueError("must be an integer") from None
    if v < 1:
        raise ValueError("must be an integer >= 1")
    return v


def _boolean(text: str):
    try:
        return parse_flag(text)
    except ValueError:
        raise ValueError("must be a boolean (true/false)") from None


def _decode_mode(text: str):
    if text not in DECODE_MODES:
        raise ValueError(f"must be one of {', '.join(DECODE_MODES)}")
    return text


@dataclasses.dataclass(frozen=True)
class Spec:
    """One request option: its value's type and default, the parser of its text, the bounds
    its schema states (pydantic Field keywords: gt, ge) or its choices, and what it means."""

    name: str
    type: type
    parse: Callable[[str], object]
    description: str
    default: object = None
    bounds: dict = dataclasses.field(default_factory=dict)
    choices: tuple = ()


SPECS = (
    Spec("budget_ms", float, _positive_number, "end-to-end time budget in ms (upload, probe, "
         "queue, decode, preprocess, model)", bounds={"gt": 0}),
    Spec("budget_gflops", float, _positive_number, "bound on the model's GFLOPs",
         bounds={"gt": 0}),
    Spec("top_k", int, _positive_int, "number of labels returned (capped at the classes)",
         DEFAULT_TOP_K, {"ge": 1}),
    Spec("strict", bool, _boolean, "refuse with 422 instead of answering over budget", False),
    Spec("frames", int, _positive_int, "only configurations with these frames", bounds={"ge": 1}),
    Spec("pixels", int, _positive_int, "only configurations of this frame size",
         bounds={"ge": 1}),
    Spec("patch", int, _positive_int, "only configurations with this patch", bounds={"ge": 1}),
    Spec("decode", str, _decode_mode, "only this decode mode: exact (each segment's sampled "
         "frame) or keyframe (the keyframe nearest it, where each segment holds one); default: "
         "whichever fits the budget best", choices=DECODE_MODES),
)
PARSERS = {s.name: s.parse for s in SPECS}
NAMES = tuple(PARSERS)
OVERRIDES = ("frames", "pixels", "patch")  # constraints on the configuration


def _overrides(self) -> dict:
    """The explicit configuration constraints given ({"frames": 16} ...)."""
    return {k: getattr(self, k) for k in OVERRIDES if getattr(self, k) is not None}


# budget_ms: float | None = None, ..., top_k: int = DEFAULT_TOP_K, ...
Options = dataclasses.make_dataclass(
    "Options", [(s.name, s.type if s.default is not None else s.type | None, s.default)
                for s in SPECS],
    namespace={"overrides": property(_overrides), "__module__": __name__,
               "__doc__": "The options of one request (SPECS)."}, frozen=True)


def _unwrap_json(text: str) -> str | None:
    """A form value as BentoML's client sends it (json.dumps of the argument) -> plain text;
    None for JSON null. Plain text that is not JSON is returned as it is."""
    stripped = text.strip()
    if stripped == "null":
        return None
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
        return value if isinstance(value, str) else stripped
    return stripped


def parse_options(query: Iterable[tuple[str, str]] = (), form: Iterable[tuple[str, str]] = (),
                  *, ignore: Iterable[str] = ()) -> Options:
    """Options from (name, value) pairs of the query string and of the form fields.
    `ignore`: names that are not options but are allowed (the file part, "video")."""
    ignore = set(ignore)
    problems: list[str] = []
    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    for where, pairs in (("query string", query), ("form", form)):
        seen_here: set[str] = set()
        for name, raw in pairs:
            if name in ignore:
                continue
            if name not in PARSERS:
                problems.append(f"{name}: unknown parameter (known: {', '.join(NAMES)})")
                continue
            if name in seen_here:
                problems.append(f"{name}: given more than once in the {where}")
                continue
            seen_here.add(name)
            if not isinstance(raw, str):
                problems.append(f"{name}: must be a plain value, not a file")
                continue
            text = _unwrap_json(raw)
            if text is None:
                continue
            if text == "":
                problems.append(f"{name}: empty value")
                continue
            try:
                value = PARSERS[name](text)
            except ValueError as e:
                problems.append(f"{name}: {e}, got {raw!r}")
                continue
            if name in values and values[name] != value:
                problems.append(f"{name}: {values[name]!r} in the {origin[name]} but {value!r} "
                                f"in the {where}")
                continue
            values[name] = value
            origin[name] = where
    if problems:
        raise BadParameters(problems)
    return Options(**values)
