"""One classify request from HTTP to JSON, independent of BentoML (a Starlette `Request` in, an
`Answer` out), plus the background loader that makes the engine ready.

The order of a request (docs/design.md sections 2 and 6):

    arrive -> 503 if the worker is draining (SIGTERM)
           -> an upload place (at most max_uploads per worker, else 429)
           -> query-string options checked (422 before reading the body)
           -> upload streamed to a temporary file (413 as soon as it is over the limit, 408 if
              it stalls or trickles); the upload place is given back
           -> a place among the requests being served (at most max_inflight, else 429)
           -> options from query + form (422) -> probe (400/413/415, no decoding)
           -> the scheduler (serving.engine): 422 at once for a strict budget it cannot meet;
              otherwise decode and model when and at the configuration it chooses -> JSON
    the temporary file is removed on every path.

Any exception that is not one of ours becomes a 500 whose body says nothing but "see the log"
(the traceback goes to the log), so a bad request never takes the server down.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time

from video import NotAVideo, VideoError

from .admission import Admission
from .engine import Engine
from .errors import BadRequest, NotReady, ServiceError, from_video_error
from .options import parse_options
from .settings import Settings
from .tables import QuickProfile
from .upload import VIDEO_FIELD, read_upload

log = logging.getLogger("stretchysnake.serving")


@contextlib.contextmanager
def _while(gauge):
    """One more on a gauge (None: no metrics) while inside."""
    if gauge is None:
        yield
        return
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


@dataclasses.dataclass
class Answer:
    status: int
    body: dict
    headers: dict = dataclasses.field(default_factory=dict)


class Loader:
    """Loads and warms up the engine in a background thread, so that the process answers
    /livez (and /readyz with 503) meanwhile; `engine()` raises NotReady until it is done."""

    def __init__(self, settings: Settings, quick: QuickProfile = QuickProfile(), on_change=None):
        self.settings, self.quick, self.on_change = settings, quick, on_change
        self._engine: Engine | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._thread: threading.Thread | None = None

    def start(self, background: bool = True) -> None:
        if background:
            self._thread = threading.Thread(target=self._load, name="stretchysnake-loader",
                                            daemon=True)
            self._thread.start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            self._engine = Engine.start(self.settings, self.quick, on_change=self.on_change)
        except BaseException as e:  # noqa: BLE001 - reported by /livez and every request
            self.error = e
            log.exception("StretchySnake failed to start: %s", e)

    def close(self) -> None:
        """Stop what the engine started (its decoding processes)."""
        if self._engine is not None:
            self._engine.close()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self._engine is not None and self._engine.ready

    @property
    def alive(self) -> bool:
        return self.error is None

    def engine(self) -> Engine:
        if self.ready:
            return self._engine
        if self.error is not None:
            raise NotReady(f"the model failed to load: {self.error}", retry_after_s=60)
        raise NotReady(f"the model is loading and warming up "
                       f"({time.monotonic() - self.started:.0f} s so far)")


class ClassifyHandler:
    def __init__(self, loader: Loader, settings: Settings, metrics=None):
        self.loader, self.settings, self.metrics = loader, settings, metrics
        self.admission = Admission(settings.max_uploads, settings.max_inflight)
        # probes wait on a decoding process: a few fixed threads (not a pool of changing ones,
        # each of which would keep a malloc arena at its own peak)
        self._probe_threads = concurrent.futures.ThreadPoolExecutor(
            2, thread_name_prefix="stretchysnake-probe")

    def close(self) -> None:
        self._probe_threads.shutdown(wait=False, cancel_futures=True)

    @property
    def inflight(self) -> int:
        return self.admission.taken

    async def drain(self, timeout_s: float, linger_s: float = 1.0, poll_s: float = 0.05) -> bool:
        """Take no new request (503) and wait until every request taken has its answer;
        False if `timeout_s` passed first. Answer 503 for `linger_s` at least: a request on
        its way in (its headers not read yet) gets an answer rather than a closed connection,
        and load balancers see /readyz fail."""
        self.admission.start_draining()
        start = time.monotonic()
        while self.admission.taken or time.monotonic() - start < min(linger_s, timeout_s):
            if time.monotonic() - start >= timeout_s:
                return False
            await asyncio.sleep(poll_s)
        return True

    def _refused(self, err: ServiceError) -> Answer:
        if self.metrics is not None:
            self.metrics.refused(err.status, err.code, err.detail.get("cause"))
        level = logging.WARNING if err.status >= 500 else logging.INFO
        log.log(level, "classify refused: %d %s: %s", err.status, err.code, err.message)
        return Answer(err.status, err.payload(), dict(err.headers))

    async def handle(self, request) -> Answer:
        """request: a Starlette Request (headers, query_params, stream())."""
        arrival = time.perf_counter()
        if self.metrics is not None:
            self.metrics.inflight.inc()
        upload = None
        try:
            with self.admission.uploading(), _while(self.metrics and self.metrics.uploading):
                engine = self.loader.engine()
                query = list(request.query_params.multi_items())
                parse_options(query)  # a bad query string is refused before the body is read
                upload = await read_upload(request.headers, request.stream(),
                                           self.settings.tmpdir, self.settings.max_upload_bytes,
                                           self.settings.upload_idle_s,
                                           self.settings.upload_min_rate)
            t_read = time.perf_counter()
            with self.admission.queued_request():
                if not upload.has_video_part:
                    raise BadRequest(f"no '{VIDEO_FIELD}' part in the form: send the file as "
                                     f"-F {VIDEO_FIELD}=@clip.mp4", code="missing_video")
                if upload.path is None:
                    raise BadRequest("the upload is empty (0 bytes): nothing to classify",
                                     code="empty_upload")
                options = parse_options(query, upload.fields, ignore={VIDEO_FIELD})
                info, probe_s = await asyncio.get_running_loop().run_in_executor(
                    self._probe_threads, engine.probe, upload.path)
                measured = {"upload": (t_read - arrival) * 1e3, "probe": probe_s * 1e3}
                scheduled, future = engine.submit(upload.path, info, options, arrival=arrival,
                                                  stages_ms=measured, probe_s=probe_s)
                try:
                    result = await asyncio.wrap_future(future)
                except asyncio.CancelledError:
                    engine.cancel(scheduled)
                    raise
            if self.metrics is not None:
                self.metrics.answered(result)
            return Answer(200, result)
        except ServiceError as e:
            return self._refused(e)
        except VideoError as e:
            err = from_video_error(e)
            if isinstance(e, NotAVideo) and upload is not None and not upload.form \
                    and upload.declared_type in ("application/json", "text/plain"):
                err.message += (f" (the {upload.declared_type} body was read as the video: send "
                                f"multipart/form-data with the file in a '{VIDEO_FIELD}' part, "
                                f"curl -F {VIDEO_FIELD}=@clip.mp4, or the raw video bytes)")
            return self._refused(err)
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            if type(e).__name__ == "ClientDisconnect":
                return self._refused(BadRequest("the client went away before the upload ended",
                                                code="client_disconnected"))
            log.exception("classify failed")
            err = ServiceError("an unexpected error occurred; see the server log")
            return self._refused(err)
        finally:
            if self.metrics is not None:
                self.metrics.inflight.dec()
            if upload is not None:
                upload.remove()
