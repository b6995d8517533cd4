"""Server settings, from environment variables (all optional):

    STRETCHYSNAKE_CHECKPOINT        anything model.load_checkpoint reads
                                    (default: checkpoints/stretchysnake_nano in the repository)
    STRETCHYSNAKE_LABELS            class names: a JSON list or one name per line (default: the
                                    checkpoint's labels.json; public .pth files carry none)
    STRETCHYSNAKE_PROFILE           the profile table; an explicit path must exist
                                    (default: profiles/<device>.json if it was measured on this
                                    model's architecture, else a quick self-profile)
    STRETCHYSNAKE_DEVICE            cpu, cuda or cuda:N (default: cuda when available)
    STRETCHYSNAKE_THREADS           torch CPU threads of the model (default on CPUs: half the
                                    cores, all of them with SCHEDULER=fifo; serving.engine)
    STRETCHYSNAKE_TMPDIR            where uploads live while a request runs
                                    (default: $TMPDIR/stretchysnake-uploads)
    STRETCHYSNAKE_MAX_UPLOAD_BYTES  larger uploads get 413, checked while reading (200000000)
    STRETCHYSNAKE_MAX_DURATION_S    longer videos get 413 (3600)
    STRETCHYSNAKE_MAX_DECODE_S      opening + decoding a video slower than this gets 413 (10)
    STRETCHYSNAKE_DECODE_ISOLATION  process: probe and decode in child processes that are killed
                                    past MAX_DECODE_S and limited to DECODE_MEMORY_MB (a hard
                                    bound, ~1 ms a request); inline: in the worker itself, with
                                    only the checks between frames (process)
    STRETCHYSNAKE_DECODE_MEMORY_MB  memory (address space) a decoding process may add to its
                                    start-up size; a video that needs more gets 413 (2048;
                                    256 at least: threads and malloc reserve some)
    STRETCHYSNAKE_MAX_INFLIGHT      /classify requests per worker whose upload is complete,
                                    waiting or running; more get 429 (8)
    STRETCHYSNAKE_MAX_UPLOADS       uploads in progress per worker; more get 429 (64)
    STRETCHYSNAKE_UPLOAD_IDLE_S     an upload that sends nothing for this long gets 408 (10)
    STRETCHYSNAKE_UPLOAD_MIN_RATE   bytes/s an upload must average once it has run for
                                    UPLOAD_IDLE_S; slower gets 408 (1024)
    STRETCHYSNAKE_SCHEDULER         deadline: least slack first, the configuration chosen across
                                    the queue, decode overlapping the model; fifo: arrival order,
                                    one request at a time (the path before the scheduler, kept for
                                    comparison) (deadline)
    STRETCHYSNAKE_DECODE_SLOTS      decodes at once per worker of work that can wait (2), in
                                    decoding processes niced by DECODE_NICE
    STRETCHYSNAKE_URGENT_SLOTS      decodes at once beyond those, for requests that cannot wait,
                                    at normal priority (1; 0: one pool, work that can wait held
                                    back instead); the worker keeps one more process for probes
    STRETCHYSNAKE_DECODE_NICE       the niceness of the decode slots' processes when there are
                                    urgent slots (10; 0-19)
    STRETCHYSNAKE_MAX_BATCH         requests of one configuration run as one batch (default: 8
                                    on CUDA, 1 on CPUs, where a batch costs the sum of its runs)
    STRETCHYSNAKE_DEFAULT_DEADLINE_MS  the deadline of requests without budget_ms (1000)
    STRETCHYSNAKE_AGE_BOUND_MS      requests without budget_ms, or already late, go first once
                                    they have waited this long (1000)
    STRETCHYSNAKE_DEADLINE_MARGIN_MS  the scheduler aims to answer this long before the budget
                                    ends, for the answer's way to the client (5)
    STRETCHYSNAKE_DRAIN_S           after SIGTERM: new requests get 503, admitted ones are
                                    answered for up to this long, then the worker stops (30)
    STRETCHYSNAKE_CACHE             where a self-measured profile is kept between starts
                                    (default: ~/.cache/stretchysnake)
    STRETCHYSNAKE_API_KEY           when set, /classify and /profile need the header
                                    `Authorization: Bearer <key>` (401 otherwise; serving.auth);
                                    never logged (default: none, everything open)
    STRETCHYSNAKE_METRICS_NEED_KEY  true: /metrics needs the key too (false: Prometheus
                                    scrapes it without one)

A bad value raises `SettingsError` naming every problem. Standard library only.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "stretchysnake_nano"
PREFIX = "STRETCHYSNAKE_"
ISOLATION_MODES = ("process", "inline")
SCHEDULERS = ("deadline", "fifo")


class SettingsError(ValueError):
    """Settings the server cannot start with."""


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_flag(text: str) -> bool:
    """true/1/yes/on or false/0/no/off, any case (the settings' and the request options'
    booleans); ValueError otherwise."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _number(default, low, high=math.inf):
    """A numeric setting, read from STRETCHYSNAKE_<its name in capitals>, within [low, high];
    its kind (int or float) is the field's annotation."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high})


@dataclasses.dataclass(frozen=True)
class Settings:
    checkpoint: Path = DEFAULT_CHECKPOINT
    checkpoint_from_env: bool = False   # False: the bundled default (a clearer message if missing)
    labels: Path | None = None
    profile: Path | None = None          # None: serving.devices.default_profile_path(device)
    device: str | None = None
    threads: int | None = _number(None, 1)
    tmpdir: Path = Path(tempfile.gettempdir()) / "stretchysnake-uploads"
    max_upload_bytes: int = _number(200_000_000, 1)
    max_duration_s: float = _number(3600.0, 0.001)
    max_decode_s: float = _number(10.0, 0.001)
    decode_isolation: str = "process"     # or "inline"
    decode_memory_mb: int = _number(2048, 256)  # threads and malloc reserve some
    max_inflight: int = _number(8, 1)
    max_uploads: int = _number(64, 1)
    upload_idle_s: float = _number(10.0, 0.001)
    upload_min_rate: float = _number(1024.0, 0)
    scheduler: str = "deadline"          # or "fifo"
    decode_slots: int = _number(2, 1)
    urgent_slots: int = _number(1, 0)
    decode_nice: int = _number(10, 0, 19)  # setpriority's range for an unprivileged process
    max_batch: int | None = _number(None, 1)  # None: 8 on CUDA, 1 on CPUs
    default_deadline_ms: float = _number(1000.0, 1)
    age_bound_ms: float = _number(1000.0, 0)
    deadline_margin_ms: float = _number(5.0, 0)
    drain_s: float = _number(30.0, 0)
    cache: Path = Path.home() / ".cache" / "stretchysnake"
    api_key: str | None = dataclasses.field(default=None, repr=False)  # never in a log line
    metrics_need_key: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict = {}

        def get(name: str) -> str | None:
            v = env.get(PREFIX + name)
            return v if v not in (None, "") else None

        def number(name: str, kind, low, high=math.inf):
            text = get(name)
            if text is None:
                return None
            try:
                v = kind(text)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                problems.append(f"{PREFIX}{name}={text!r}: not {what}")
                return None
            if not (math.isfinite(v) and v >= low):
                problems.append(f"{PREFIX}{name}={text!r}: must be >= {low}")
                return None
            if v > high:
                problems.append(f"{PREFIX}{name}={text!r}: must be <= {high}")
                return None
            return v

        if get("CHECKPOINT"):
            values["checkpoint"] = Path(get("CHECKPOINT")).expanduser()
            values["checkpoint_from_env"] = True
        for key, name in (("labels", "LABELS"), ("profile", "PROFILE"), ("tmpdir", "TMPDIR"),
                          ("cache", "CACHE")):
            if get(name):
                values[key] = Path(get(name)).expanduser()
        if get("DEVICE"):
            values["device"] = get("DEVICE")
        if get("API_KEY"):
            key = get("API_KEY")
            if any(c.isspace() for c in key):
                problems.append(f"{PREFIX}API_KEY: must not contain spaces (the value is not "
                                f"shown)")
            else:
                values["api_key"] = key
        if get("METRICS_NEED_KEY"):
            try:
                values["metrics_need_key"] = parse_flag(get("METRICS_NEED_KEY"))
            except ValueError:
                problems.append(f"{PREFIX}METRICS_NEED_KEY={get('METRICS_NEED_KEY')!r}: must "
                                f"be true or false")
        for key, name, allowed in (("decode_isolation", "DECODE_ISOLATION", ISOLATION_MODES),
                                   ("scheduler", "SCHEDULER", SCHEDULERS)):
            if get(name):
                mode = get(name).strip().lower()
                if mode in allowed:
                    values[key] = mode
                else:
                    problems.append(f"{PREFIX}{name}={get(name)!r}: must be one of "
                                    f"{', '.join(allowed)}")
        for field in dataclasses.fields(cls):
            if "low" in field.metadata:
                kind = int if field.type.startswith("int") else float
                v = number(field.name.upper(), kind, field.metadata["low"], field.metadata["high"])
                if v is not None:
                    values[field.name] = v
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems))
        return cls(**values)

    def check_checkpoint(self) -> None:
        """SettingsError with a message saying what to do when the checkpoint is missing."""
        if self.checkpoint.exists():
            return
        if self.checkpoint_from_env:
            raise SettingsError(f"checkpoint not found: {self.checkpoint} "
                                f"(from {PREFIX}CHECKPOINT; no such file or directory)")
        raise SettingsError(
            f"the bundled checkpoint {self.checkpoint} does not exist (it is not trained yet). "
            f"Point {PREFIX}CHECKPOINT at a checkpoint directory written by "
            f"model.save_checkpoint or at a public VideoMamba .pth file, e.g. "
            f"{PREFIX}CHECKPOINT=runs/nano bentoml serve")
