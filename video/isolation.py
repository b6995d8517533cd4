"""Decoding in child processes: a wall-clock bound and a memory bound that hold against a
malicious file, which the in-process bounds do not.

Why. `Limits.max_decode_s` is checked between packets and frames, and the frame-area limit once
the container is open; neither can stop a C call under way, and nothing in a process bounds its
own memory. Opening a container can already decode: FFmpeg's `avformat_find_stream_info` decodes
the first frames of every stream, keeping each stream's decoder, before `probe` sees a size
(`video.source` tells those decoders to skip every frame, which holds only where the container
lists its streams before that call: not FLV or MPEG-PS). Measured on the 2-core development
machine with `video.corpus.bomb` (then in Matroska, before that change): 122 KB (one 64x48
stream and sixteen 4096x4096 H.264 streams) keep `probe` busy 1.5-2.2 s even with `max_decode_s=0.05` (probe has
no deadline; `decode_frames` raises DecodeTimeout only after its own 1.3-1.8 s `av.open`) and
raise the peak RSS by 0.35-1.2 GB; 481 KB (64 streams) take 9.3 s and 4.6 GB; FFmpeg accepts
1000 streams. A 200 KB raw stream of 8192x8192 frames costs 0.9 GB before `FrameTooLarge`.
A child process can be killed, and its address space can be limited.

    pool = DecodePool(memory_bytes=2 << 30)            # children start on first use or .start()
    info = pool.probe(path, limits)                    # as video.probe
    frames = pool.decode_frames(path, 8, short_side=128, info=info, limits=limits, stats=stats)
    pool.close()

Each call runs in one of at most `processes` long-lived children (`video.isolation` run by the
same Python: PyAV and numpy only, ~0.4 s and ~50 MB to start), one call at a time per child:

- the child's address space is limited (RLIMIT_AS) to its size after start-up plus
  `memory_bytes`: an allocation beyond it fails inside FFmpeg or numpy; a call that came within
  1/8 of the limit raises `DecodeMemoryExceeded` (FFmpeg reports most failed allocations as
  invalid data, or conceals them), and a child that grew past half of it is replaced;
- a call that runs longer than `limits.max_decode_s` (plus `grace_s`, so that the child's own
  cooperative deadline, which costs no restart, usually answers first) gets its child killed
  (SIGKILL) and raises `DecodeTimeout`;
- a child that dies during a call (killed from outside, or a crash inside a decoder) costs a
  retry on a child started after it died; the file is blamed (`CorruptVideo`) only when it
  brings that one down too;
- children ignore SIGTERM and SIGINT: a supervisor that signals the whole process tree at
  shutdown (BentoML's circus stops a worker's children with it) must not take decoding away
  from the requests the worker is still answering; the parent stops its children (`close`, or
  its own exit closes their pipe);
- a child is replaced after `max_calls` calls, so that what FFmpeg and malloc leave behind
  after thousands of videos does not add up.

Replacements start in the background. Bad input raises the same typed errors as in-process, and
the frames are the same (the same code runs). The memory limit needs Linux (RLIMIT_AS counted from
/proc/self/status); elsewhere only the wall-clock bound applies. `InlineDecoder` has the same
two methods and decodes in the calling thread (training, and STRETCHYSNAKE_DECODE_ISOLATION=inline).
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from .decode import DecodeStats, decode_frames
from .errors import CorruptVideo, DecodeMemoryExceeded, DecodeTimeout, LimitExceeded
from .limits import Limits, resolve
from .probe import VideoInfo, probe

log = logging.getLogger("stretchysnake.video")

_HEADER = struct.Struct("<Q")   # every message: its length, then a pickle
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_PIPE_BYTES = 1 << 20           # larger pipes: a decoded clip comes back in fewer reads


class InlineDecoder:
    """Decoding in the calling thread: no per-call overhead, only the cooperative bounds."""

    isolation = "inline"

    def probe(self, source, limits: Limits | None = None) -> VideoInfo:
        return probe(source, limits)

    def decode_frames(self, source, num_frames: int, **kwargs):
        return decode_frames(source, num_frames, **kwargs)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ the pipe

class _Expired(Exception):
    """The reply did not come before the deadline."""


def _write_message(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    poller = None
    while len(buf) < n:
        if deadline is not None:
            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000) + 1)):
                if time.monotonic() >= deadline:
                    raise _Expired
                continue
        chunk = os.read(fd, min(n - len(buf), _PIPE_BYTES))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _read_message(fd: int, deadline: float | None = None):
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _widen(fd: int) -> None:
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default pipe works too


# ------------------------------------------------------------------------------ the child

def _vm_bytes(field: str) -> int | None:
    """VmSize / VmPeak of this process from /proc (Linux), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _few_malloc_arenas() -> None:
    # glibc reserves 64 MiB of address space per thread arena; FFmpeg's decoding threads would
    # spend the allowance on reservations, not on frames.
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _caused_by_memory(err: BaseException) -> bool:
    """Is a failed allocation behind `err`? (The video package turns PyAV's ENOMEM into
    CorruptVideo `from None`; the original stays in the context chain.)"""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, MemoryError) or getattr(err, "errno", None) == errno.ENOMEM:
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _child_main(request_fd: int, reply_fd: int, memory_bytes: int, nice: int = 0) -> int:
    """Serve calls until the parent closes the pipe, or until this process should be replaced."""
    if nice:
        os.nice(nice)  # only ever raised: lowering it back needs a privilege a container lacks
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent decides when a child stops
        signal.signal(sig, signal.SIG_IGN)
    _few_malloc_arenas()
    baseline = _vm_bytes("VmSize")
    limited = bool(memory_bytes) and baseline is not None
    if limited:
        import resource
        limit = baseline + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _widen(reply_fd)
    _write_message(reply_fd, pickle.dumps(("ready", os.getpid(), baseline)))
    calls = {"probe": probe, "decode": _decode_with_stats}
    while True:
        try:
            op, kwargs = _read_message(request_fd)
        except EOFError:
            return 0
        try:
            status, value = "ok", calls[op](**kwargs)
        except Exception as err:  # noqa: BLE001 - every failure goes back to the parent
            status, value = "error", err
        if limited:
            status, value = _account_memory(status, value, baseline, memory_bytes)
        # A process whose address space grew past half the allowance is replaced after this
        # call: FFmpeg and malloc keep what they reserved (the next call would start near the
        # limit), and a fresh process keeps VmPeak a measure of one call.
        retire = limited and max(_vm_bytes("VmSize") or 0,
                                 _vm_bytes("VmPeak") or 0) - baseline > memory_bytes // 2
        try:
            payload = pickle.dumps((status, value, retire), protocol=5)
        except Exception as err:  # noqa: BLE001 - a result or an exception that does not pickle
            text = f"{type(value).__name__}: {value}" if status == "error" else repr(err)
            payload, retire = pickle.dumps(("error", RuntimeError(text), True)), True
        try:
            _write_message(reply_fd, payload)
        except BrokenPipeError:  # the parent gave up on this call (or exited)
            return 0
        if retire:
            return 0


def _account_memory(status: str, value, baseline: int, memory_bytes: int):
    """The call's outcome, or DecodeMemoryExceeded if it ran out of memory.

    A MemoryError or ENOMEM in the chain says so. But FFmpeg mostly reports a failed frame
    allocation as invalid data or EAGAIN, and opening a container ignores a stream whose frames
    could not be decoded (and a decoder may conceal a frame it could not allocate); so an
    address space that reached the limit (within 1/8 of the allowance) counts as running out,
    whether the call failed or not. A limit of `Limits` that the input exceeds stays the answer:
    it says more about the input."""
    if status == "error" and isinstance(value, LimitExceeded):
        return status, value
    peak = _vm_bytes("VmPeak")
    near_limit = peak is not None and peak - baseline >= memory_bytes - memory_bytes // 8
    if near_limit or (status == "error" and _caused_by_memory(value)):
        return "error", DecodeMemoryExceeded(
            None if peak is None else peak - baseline, memory_bytes,
            f"decoding this video needs more memory than the limit of "
            f"{memory_bytes / 2**20:,.0f} MiB for a decoding process")
    return status, value


def _decode_with_stats(**kwargs):
    stats = DecodeStats()
    frames = decode_frames(stats=stats, **kwargs)
    return frames, stats


# ------------------------------------------------------------------------------ the parent

class _StartFailed(RuntimeError):
    """A decoding process died or hung before it was ready."""


class _Child:
    """One decoding process and the two pipes to it."""

    def __init__(self, memory_bytes: int, start_timeout_s: float, nice: int = 0):
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
        code = (f"import sys; from video.isolation import _child_main; "
                f"sys.exit(_child_main({request_r}, {reply_w}, {int(memory_bytes)}, {int(nice)}))")
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                                         stdin=subprocess.DEVNULL, pass_fds=(request_r, reply_w))
        finally:
            os.close(request_r)
            os.close(reply_w)
        self.request_fd, self.reply_fd = request_w, reply_r
        self.calls, self.worn_out = 0, False
        self.started = time.monotonic()
        _widen(self.reply_fd)
        try:
            _, self.pid, self.baseline = _read_message(self.reply_fd,
                                                       time.monotonic() + start_timeout_s)
        except _Expired:
            self.kill()
            raise _StartFailed(f"a decoding process did not start within {start_timeout_s:g} s")
        except EOFError:
            reason = self.exit_reason()
            self.kill()
            raise _StartFailed(f"a decoding process ended while starting ({reason})") from None

    def call(self, request, deadline: float | None):
        _write_message(self.request_fd, pickle.dumps(request, protocol=5))
        return _read_message(self.reply_fd, deadline)

    def kill(self) -> None:
        for fd in (self.request_fd, self.reply_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.request_fd = self.reply_fd = -1
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            log.warning("decoding process %d did not exit after SIGKILL", self.proc.pid)

    def exit_reason(self) -> str:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


class DecodePool:
    """`probe` and `decode_frames` in child processes with hard time and memory bounds (see the
    module's docstring). Thread-safe; at most `processes` calls run at once, others wait for a
    free child. `nice`: the children's niceness, added to this process's (a pool for work that
    can wait runs its children niced, so that the scheduler gets the cores for urgent work
    from the kernel at once instead of waiting for a decode to end)."""

    isolation = "process"

    def __init__(self, processes: int = 2, memory_bytes: int | None = 2 << 30,
                 grace_s: float = 0.25, start_timeout_s: float = 60.0,
                 max_calls: int | None = 1000, nice: int = 0):
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        if max_calls is not None and max_calls < 1:
            raise ValueError(f"max_calls must be at least 1 (or None), not {max_calls}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be between 0 and 19, not {nice}")
        self.processes, self.memory_bytes, self.nice = processes, memory_bytes or 0, nice
        self.max_calls = max_calls
        self.grace_s, self.start_timeout_s = grace_s, start_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._count = 0          # children alive or starting
        self._probes_waiting = 0  # probes go first: see _acquire
        self._closed = False
        self.restarts = 0        # children replaced after a timeout, a crash or a memory failure
        self.recycled = 0        # children replaced after max_calls calls

    # -- the two calls
    def probe(self, source, limits: Limits | None = None) -> VideoInfo:
        limits = resolve(limits)
        return self._call("probe", {"source": _portable(source), "limits": limits},
                          limits.max_decode_s, "opening the video", first=True)

    def decode_frames(self, source, num_frames: int, mode: str = "test", rng=None,
                      limits: Limits | None = None, short_side: int | None = None,
                      info: VideoInfo | None = None, *, times=None,
                      stats: DecodeStats | None = None, decode_mode: str = "exact"):
        """As `video.decode_frames`. `rng` is used in the child: a generator passed in does not
        advance here."""
        limits = resolve(limits)
        kwargs = dict(source=_portable(source), num_frames=num_frames, mode=mode, rng=rng,
                      limits=limits, short_side=short_side, info=info, times=times,
                      decode_mode=decode_mode)
        frames, child_stats = self._call("decode", kwargs, limits.max_decode_s, "decoding")
        if stats is not None:
            for field in dataclasses.fields(DecodeStats):
                setattr(stats, field.name, getattr(child_stats, field.name))
        return frames

    # -- children
    def start(self) -> None:
        """Start the children in the background (the first calls need not wait for them)."""
        for _ in range(self.processes):
            self._replace_in_background()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for child in idle:
            child.kill()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        with self._cond:
            return [c.pid for c in self._idle]

    def _spawn_counted(self) -> _Child:
        """A new child; the caller has already counted it."""
        try:
            return _Child(self.memory_bytes, self.start_timeout_s, self.nice)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise

    def _acquire(self, started_after: float | None = None, first: bool = False) -> _Child:
        """An idle child (one started after `started_after`, when given), or a new one.
        Callers with `first` (probes: milliseconds) take the next free child ahead of the
        others (decodes: a clip each): a request is known to the scheduler only once probed.
        (The server keeps one child more than its decode slots, but two probes at once, or a
        retry, can still find every child busy.)"""
        with self._cond:
            if first:
                self._probes_waiting += 1
            try:
                child = self._take_idle(started_after, first)
            finally:
                if first:
                    self._probes_waiting -= 1
                    self._cond.notify_all()
        return child if child is not None else self._spawn_counted()

    def _take_idle(self, started_after: float | None, first: bool) -> _Child | None:
        """With the lock held: an idle child, or None once a new one has been counted."""
        while True:
            if self._closed:
                raise RuntimeError("the decoding pool is closed")
            if not first and self._probes_waiting:
                self._cond.wait()
                continue
            for child in reversed(self._idle):
                if child.proc.poll() is not None:
                    # died while idle (killed from outside): not this request's fault
                    self._idle.remove(child)
                    self._count -= 1
                    threading.Thread(target=child.kill, daemon=True).start()
                elif started_after is None or child.started > started_after:
                    self._idle.remove(child)
                    return child
            if self._idle and self._count >= self.processes:
                # only children older than the death are idle: replace one of them
                old = self._idle.pop(0)
                self._count -= 1
                threading.Thread(target=old.kill, daemon=True).start()
            if self._count < self.processes:
                self._count += 1
                return None
            self._cond.wait()

    def _release(self, child: _Child, healthy: bool) -> None:
        if healthy:
            with self._cond:
                if not self._closed:
                    self._idle.append(child)
                    self._cond.notify_all()  # a probe among the waiters goes first
                    return
                self._count -= 1
            child.kill()
            return
        # killed (timeout), dead (crash) or replaced (memory, age): reap it and start another
        # one off the request's path, so that the answer goes out at once
        threading.Thread(target=self._retire, args=(child,), daemon=True,
                         name="decode-retire").start()

    def _retire(self, child: _Child) -> None:
        child.kill()
        with self._cond:
            self._count -= 1
            if child.worn_out:
                self.recycled += 1
            else:
                self.restarts += 1
            self._cond.notify_all()
        self._replace_in_background(wait=True)

    def _replace_in_background(self, wait: bool = False) -> None:
        def spawn():
            with self._cond:
                if self._closed or self._count >= self.processes:
                    return
                self._count += 1
            try:
                child = self._spawn_counted()
            except Exception as e:  # noqa: BLE001 - the next call tries again and reports it
                log.warning("could not start a decoding process: %s", e)
                return
            self._release(child, True)
        if wait:
            spawn()
        else:
            threading.Thread(target=spawn, daemon=True, name="decode-spawn").start()

    def _call(self, op: str, kwargs: dict, timeout_s: float | None, what: str,
              first: bool = False):
        """One call in a child. A child that dies during the call costs a retry on another;
        the file is blamed when a second one dies on it. A child that dies before it could
        take the call (killed while starting) says nothing about the file: another starts."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s + self.grace_s
        deaths: list[str] = []
        failed_starts = 0
        died_at = None
        while True:
            try:
                return self._call_once(op, kwargs, deadline, timeout_s, what, died_at, first)
            except _ChildDied as e:
                deaths.append(e.reason)
                if len(deaths) == 2:
                    raise CorruptVideo(f"the decoder crashed on this file twice ({deaths[0]}, "
                                       f"then {deaths[1]}, while {what})") from None
                # on a process started since: one that was idle meanwhile may be dying of the
                # same cause (several killed at once), and that must not count against the file
                died_at = e.at
                log.warning("a decoding process died (%s) while %s: retrying on a fresh one",
                            e.reason, what)
            except _StartFailed as e:
                failed_starts += 1
                if failed_starts == 3:
                    raise
                log.warning("%s: starting another one", e)

    def _call_once(self, op: str, kwargs: dict, deadline: float | None,
                   timeout_s: float | None, what: str, started_after: float | None = None,
                   first: bool = False):
        child = self._acquire(started_after, first)
        healthy = False
        try:
            t0 = time.monotonic()
            try:
                reply = child.call((op, kwargs), deadline)
            except _Expired:
                elapsed = time.monotonic() - t0
                raise DecodeTimeout(elapsed, timeout_s,
                                    f"{what} took longer than {timeout_s:g} s (the limit, "
                                    f"Limits.max_decode_s); it was stopped after "
                                    f"{elapsed:.2f} s") from None
            except (EOFError, BrokenPipeError):
                raise _ChildDied(child.exit_reason(), time.monotonic()) from None
            status, value, retire = reply
            child.calls += 1
            # A long-lived child's RSS creeps up (FFmpeg's and malloc's leftovers from thousands
            # of videos: +11 MB per child in a 4-minute soak); like a web server's max_requests,
            # a fresh one replaces it now and then (~0.2 s to start, off the request's path).
            child.worn_out = not retire and self.max_calls is not None \
                and child.calls >= self.max_calls
            healthy = not retire and not child.worn_out
            if status == "ok":
                return value
            raise value
        finally:
            self._release(child, healthy)


class _ChildDied(Exception):
    def __init__(self, reason: str, at: float):
        super().__init__(reason)
        self.reason, self.at = reason, at


def _portable(source):
    """What a child can open: a path, or the bytes themselves."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    raise TypeError(f"isolated decoding takes a path or bytes, not {type(source).__name__} "
                    f"(a file object cannot be shared with another process)")


def make_decoder(isolation: str = "process", memory_bytes: int | None = 2 << 30,
                 processes: int = 2, nice: int = 0):
    """InlineDecoder for "inline", DecodePool for "process"."""
    if isolation == "inline":
        return InlineDecoder()
    if isolation == "process":
        return DecodePool(processes=processes, memory_bytes=memory_bytes, nice=nice)
    raise ValueError(f"decode isolation must be 'process' or 'inline', not {isolation!r}")
