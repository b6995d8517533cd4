"""Which requests a worker takes, at each step of the way in.

    admission = Admission(max_uploads=64, max_inflight=8)
    with admission.uploading():        # 429 too_many_uploads past max_uploads; 503 when draining
        upload = await read_upload(...)
    with admission.queued_request():   # 429 overloaded past max_inflight
        ...                            # probe, schedule, decode, model

Uploads in progress and requests whose upload is complete are counted apart: a client that
holds an upload open (a slow phone, or a connection that sends a header and trickles its body)
takes an upload place, never a place among the requests that wait for the decoders and the
model, so it cannot keep other clients from being served. Uploads have their own bound here and
a time limit in serving.upload (408).

After SIGTERM the worker drains (`start_draining`): it takes no new request (503 with
Retry-After, and /readyz says 503), answers every request already taken, then stops.
"""
from __future__ import annotations

import contextlib
import threading

from .errors import Draining, Overloaded


class Admission:
    def __init__(self, max_uploads: int, max_inflight: int):
        self.max_uploads, self.max_inflight = max_uploads, max_inflight
        self.uploads = 0          # requests reading their upload
        self.queued = 0           # requests with a complete upload, not answered yet
        self.draining = False
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        """Requests taken and not answered yet (uploading or queued)."""
        return self.uploads + self.queued

    def start_draining(self) -> None:
        self.draining = True

    @contextlib.contextmanager
    def uploading(self):
        with self._lock:
            if self.draining:
                raise Draining()
            if self.uploads >= self.max_uploads:
                raise Overloaded(f"{self.uploads} uploads in progress in this worker (the limit "
                                 f"is {self.max_uploads}): retry later", code="too_many_uploads")
            self.uploads += 1
        try:
            yield
        finally:
            with self._lock:
                self.uploads -= 1

    @contextlib.contextmanager
    def queued_request(self):
        with self._lock:
            if self.queued >= self.max_inflight:
                raise Overloaded(f"{self.queued} requests waiting or running in this worker (the "
                                 f"limit is {self.max_inflight}): retry later")
            self.queued += 1
        try:
            yield
        finally:
            with self._lock:
                self.queued -= 1
