"""One progress line on stderr for long work (profiling, training, a benchmark's requests).

    progress = Progress(len(jobs), "decode")
    for i, job in enumerate(jobs):
        ...
        progress.update(i + 1, job.name)
    progress.close()

On a terminal the line is rewritten in place (\\r); in a log (not a tty), a plain line at most
every `interval` seconds, and always the last one (`done` reaching `total`). `total=None`: a
count without a bar (work whose size is not known, a run of so many seconds). Thread-safe."""
from __future__ import annotations

import math
import sys
import threading
import time


class Progress:
    def __init__(self, total: int | None, label: str, *, stream=None, interval: float = 5.0,
                 enabled: bool = True):
        self.total, self.label, self.interval, self.enabled = total, label, interval, enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._last = -math.inf
        self._width = 0

    def update(self, done: int, text: str = "") -> None:
        if not self.enabled:
            return
        if self.total is None:
            line = f"{self.label} {done} {text}"
        else:
            filled = round(20 * done / max(1, self.total))
            line = f"{self.label} {done}/{self.total} [{'#' * filled}{'.' * (20 - filled)}] {text}"
        with self._lock:
            now = time.monotonic()
            if self.tty:
                # pad over the remains of a longer previous line
                self.stream.write("\r" + line.ljust(self._width))
                self._width = len(line)
            elif (self.total is not None and done >= self.total) \
                    or now - self._last >= self.interval:
                self.stream.write(line + "\n")
                self._last = now
            else:
                return
            self.stream.flush()

    def close(self, text: str | None = None) -> None:
        """End the line; `text`: a last state to show (written in a log too)."""
        if not self.enabled:
            return
        with self._lock:
            if text is not None:
                self.stream.write(("\r" + text.ljust(self._width) + "\n") if self.tty
                                  else text + "\n")
            elif self.tty and self._width:
                self.stream.write("\n")
            self._width = 0
            self.stream.flush()
