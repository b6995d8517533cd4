"""One classify request from HTTP to JSON, independent of BentoML (a Starlette `Request` in, an
`Answer` out), plus the background loader that makes the engine ready.

The order of a request (DESIGN.md sections 2 and 6):

    arrive -> admit (at most max_inflight per worker, else 429, before reading anything)
           -> query-string options checked (422 before reading the body)
           -> upload streamed to a temporary file (413 as soon as it is over the limit)
           -> options from query + form (422) -> probe (400/413/415, no decoding)
           -> wait for the model (one request runs at a time per worker; others queue here)
           -> select under the budget, counting everything spent so far -> decode, preprocess,
              model (engine.serve, in a worker thread) -> JSON
    the temporary file is removed on every path.

Any exception that is not one of ours becomes a 500 whose body says nothing but "see the log"
(the traceback goes to the log), so a bad request never takes the server down.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time

import anyio.to_thread

from video import NotAVideo, VideoError

from .engine import Engine, QuickProfile
from .errors import BadRequest, NotReady, Overloaded, ServiceError, from_video_error
from .options import parse_options
from .settings import Settings
from .upload import VIDEO_FIELD, read_upload

log = logging.getLogger("stretchysnake.serving")


@dataclasses.dataclass
class Answer:
    status: int
    body: dict
    headers: dict = dataclasses.field(default_factory=dict)


class Loader:
    """Loads and warms up the engine in a background thread, so that the process answers
    /livez (and /readyz with 503) meanwhile; `engine()` raises NotReady until it is done."""

    def __init__(self, settings: Settings, quick: QuickProfile = QuickProfile()):
        self.settings, self.quick = settings, quick
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
            self._engine = Engine.start(self.settings, self.quick)
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
        self.inflight = 0
        self._slot: asyncio.Lock | None = None
        # Every request's decode, preprocess and model run on this one thread (they take turns
        # anyway), so that their large, short-lived buffers come from one malloc arena: glibc
        # gives each thread of a pool its own, and each arena keeps the peak it has seen.
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="stretchysnake-model")

    def close(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    def _refused(self, err: ServiceError) -> Answer:
        if self.metrics is not None:
            self.metrics.refused(err.status, err.code)
        level = logging.WARNING if err.status >= 500 else logging.INFO
        log.log(level, "classify refused: %d %s: %s", err.status, err.code, err.message)
        return Answer(err.status, err.payload(), dict(err.headers))

    async def handle(self, request) -> Answer:
        """request: a Starlette Request (headers, query_params, stream())."""
        arrival = time.perf_counter()
        if self.inflight >= self.settings.max_inflight:
            return self._refused(Overloaded(
                f"{self.inflight} requests in flight in this worker (the limit is "
                f"{self.settings.max_inflight}): retry later"))
        if self._slot is None:
            self._slot = asyncio.Lock()
        self.inflight += 1
        if self.metrics is not None:
            self.metrics.inflight.inc()
        upload = None
        try:
            engine = self.loader.engine()
            query = list(request.query_params.multi_items())
            parse_options(query)  # a bad query string is refused before the body is read
            upload = await read_upload(request.headers, request.stream(), self.settings.tmpdir,
                                       self.settings.max_upload_bytes)
            t_read = time.perf_counter()
            if not upload.has_video_part:
                raise BadRequest(f"no '{VIDEO_FIELD}' part in the form: send the file as "
                                 f"-F {VIDEO_FIELD}=@clip.mp4", code="missing_video")
            if upload.path is None:
                raise BadRequest("the upload is empty (0 bytes): nothing to classify",
                                 code="empty_upload")
            options = parse_options(query, upload.fields, ignore={VIDEO_FIELD})
            info = await anyio.to_thread.run_sync(engine.probe, upload.path)
            t_probed = time.perf_counter()
            async with self._slot:
                t_slot = time.perf_counter()
                stages = {"upload": (t_read - arrival) * 1e3, "probe": (t_probed - t_read) * 1e3,
                          "queue": (t_slot - t_probed) * 1e3}
                result = await asyncio.get_running_loop().run_in_executor(
                    self._model_thread, functools.partial(
                        engine.serve, upload.path, info, options, arrival=arrival,
                        stages=stages))
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
            self.inflight -= 1
            if self.metrics is not None:
                self.metrics.inflight.dec()
            if upload is not None:
                upload.remove()
