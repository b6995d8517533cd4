"""The BentoML service: `bentoml serve` from the repository root (bentofile.yaml), or
`bentoml serve serving.service:StretchySnake`.

    POST /classify?budget_ms=50     multipart `video` file (or the raw video as the body);
                                    options in the query string and/or as form fields
    GET  /profile                   the active profile table and the online corrections
    GET  /readyz                    200 once the model is loaded, profiled and warmed up;
                                    503 again while draining after SIGTERM
    GET  /livez                     503 when loading failed for good
    GET  /metrics                   BentoML's metrics plus stretchysnake_* (serving.metrics)

With STRETCHYSNAKE_API_KEY set, /classify and /profile (and /metrics if configured) need
`Authorization: Bearer <key>`: 401 from the headers alone, before the body is read
(serving.auth).

SIGTERM (what Kubernetes sends on a rolling update) drains the worker: new requests get 503 with
Retry-After, the requests already taken are answered (for up to STRETCHYSNAKE_DRAIN_S), then
uvicorn's own shutdown runs and the decoding processes stop. SIGINT (Ctrl-C) goes straight to
uvicorn's shutdown.

This module is thin on purpose: the engine (serving.engine), the request handling
(serving.handler), the upload reader (serving.upload), the options (serving.options) and the
errors (serving.errors) are plain modules, usable and tested without a server. Settings come
from STRETCHYSNAKE_* environment variables (serving.settings).

Why the request is read by our own code rather than by BentoML's argument mapping: BentoML maps
neither query parameters nor a form to arguments without buffering the whole upload first, and
its validation errors are 400s; reading the request ourselves gives the query string, a size
limit checked while streaming, any content type for the file part, and 413/415/422 answers. The
`ClassifyInput` model below still describes the form, so that the OpenAPI schema, the Swagger
UI and BentoML's HTTP client know the endpoint; its `from_http_request` leaves the body unread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Literal, Optional

import attrs
import bentoml
from pydantic import BaseModel, Field, create_model
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import serving
from serving.auth import ApiKeyMiddleware, protected_paths
from serving.errors import NotReady
from serving.handler import ClassifyHandler, Loader
from serving.options import NAMES, SPECS, Spec
from serving.settings import Settings, SettingsError
from serving.timeout import install as install_timeout_fix

install_timeout_fix()  # BentoML's request timeout kept every request in memory (serving.timeout)

log = logging.getLogger("stretchysnake.serving")


# ----------------------------------------------------------------------------- schema only
class _ClassifyForm(bentoml.IODescriptor):
    @classmethod
    async def from_http_request(cls, request, serde):
        # The handler reads the request (query string, streamed body) itself: nothing is read
        # or buffered here.
        return cls.model_construct(video=None, **{k: None for k in NAMES})


def _form_field(spec: Spec):
    kind = Literal[spec.choices] if spec.choices else spec.type
    return (Optional[kind], Field(spec.default, description=spec.description, **spec.bounds))


# The classify form, for the OpenAPI schema and BentoML's client: the video and every option of
# serving.options.SPECS (each may also be given in the query string, `/classify?budget_ms=50`).
ClassifyInput = create_model(
    "ClassifyInput", __base__=_ClassifyForm,
    video=(Path, Field(description="the video file (any container/codec FFmpeg reads; the "
                                   "part's content type is ignored, the bytes are probed)")),
    **{spec.name: _form_field(spec) for spec in SPECS})


class Label(BaseModel):
    label: str
    score: float


class Config(BaseModel):
    frames: int
    pixels: int
    patch: int
    tokens: int
    decode: str = Field(description="exact or keyframe (video.decode_frames' decode_mode)")


class Budget(BaseModel):
    ms: Optional[float]
    gflops: Optional[float]
    met: bool = Field(description="measured: total time <= ms and GFLOPs <= gflops")
    feasible: bool = Field(description="predicted when the configuration was chosen")
    strict: bool
    reason: Optional[str] = Field(None, description="why the budget was missed (null when "
                                  "met): gflops, decode, model, upload, queue, preprocess")


class ClassifyOutput(BaseModel):
    labels: list[Label]
    config: Config
    gflops: float
    accuracy: Optional[float] = Field(description="top-1 of this configuration from the "
                                      "profile table; null when unknown")
    timing_ms: dict = Field(description="upload, probe, queue (waiting for a decoder and for "
                            "the model), decode, preprocess, model, total (arrival to answer) "
                            "and predicted: {decode, preprocess, model, total}")
    budget: Budget
    selection: dict
    video: dict


# ----------------------------------------------------------------------------- OpenAPI extras
_JSON_TYPES = {float: "number", int: "integer", bool: "boolean", str: "string"}
_JSON_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum"}


def _param(spec: Spec) -> dict:
    """An option as an OpenAPI query parameter."""
    schema = {"type": _JSON_TYPES[spec.type],
              **{_JSON_BOUNDS[k]: v for k, v in spec.bounds.items()}}
    if spec.choices:
        schema["enum"] = list(spec.choices)
    if spec.default is not None:
        schema["default"] = spec.default
    return {"name": spec.name, "in": "query", "required": False, "schema": schema,
            "description": spec.description}


ERROR_SCHEMA = {"type": "object", "required": ["error", "code", "status"],
                "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "object"}}}


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": ERROR_SCHEMA}}}


DESCRIPTION = """Video action recognition under a budget, on a flexible VideoMamba: one set of
weights runs at any (frames, pixels, patch) configuration.

`POST /classify` with a video file. Give a **latency budget** (`budget_ms`: the server's whole
time for the request, upload to answer) and/or a **compute budget** (`budget_gflops`): the
server answers with the most accurate profiled configuration predicted to fit, and says which
one ran, how long each stage took and whether the budget was met. With `strict=true`, a budget
that cannot be met is refused at once (422) with the smallest budget that would have been
feasible. Requests are scheduled by deadline: a tight budget is served before loose ones.

`GET /profile` shows the configurations, their accuracy and predicted latencies on this machine.
"""


class _Service(bentoml.Service):
    """BentoML's Service with the query parameters of /classify and GET /profile added to its
    OpenAPI document (BentoML documents request bodies only), and the service's own title,
    version and description instead of BentoML's boilerplate."""

    @property
    def openapi_spec(self):
        # BentoML says 3.0.2 but writes pydantic's JSON Schema 2020-12 (numeric
        # exclusiveMinimum, type null): that is OpenAPI 3.1's dialect, so say 3.1.
        spec = super().openapi_spec
        info = attrs.evolve(spec.info, title="StretchySnake", version=serving.__version__,
                            description=DESCRIPTION, contact=None)
        spec = attrs.evolve(spec, openapi="3.1.0", info=info)
        post = spec.paths["/classify"].post
        # BentoML drops None from top-level Optional output fields; accuracy is null when unknown
        body = post["responses"][200]["content"]["application/json"].schema
        accuracy = body.properties["accuracy"]
        body.properties["accuracy"] = {k: v for k, v in accuracy.items() if k != "type"} | {
            "anyOf": [{"type": "number"}, {"type": "null"}]}
        post["parameters"] = [_param(spec) for spec in SPECS]
        key = _api_key_settings()
        if key is not None:  # Swagger UI's "Authorize" button, and the 401 documented
            spec.components.setdefault("securitySchemes", {})["apiKey"] = {
                "type": "http", "scheme": "bearer", "description": "STRETCHYSNAKE_API_KEY"}
            post["security"] = [{"apiKey": []}]
            post["responses"][401] = _error_response("no API key, or not this server's")
        post["responses"].update({
            400: _error_response("malformed request, empty upload or damaged video"),
            408: _error_response("the upload stalled or trickled in too slowly"),
            413: _error_response("upload over the size limit, video too long or frames too "
                                 "large"),
            415: _error_response("not a video, no video stream, or an unsupported codec"),
            422: _error_response("invalid parameters, or a strict budget that cannot be met "
                                 "(Retry-After when the queue is the cause)"),
            429: _error_response("too many requests in flight or uploads in progress"),
            503: _error_response("the model is still loading or warming up, or the server is "
                                 "shutting down")})
        from bentoml._internal.service.openapi.specification import PathItem
        profile_security = {"security": [{"apiKey": []}]} if key is not None else {}
        spec.paths["/profile"] = PathItem(get={**profile_security,
            "tags": post.get("tags", []), "operationId": f"{self.name}__profile",
            "description": "The active profile table (configurations, GFLOPs, latency "
                           "percentiles, decode model) and the online latency corrections.",
            "responses": {200: {"description": "the active profile",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                          503: _error_response("the model is still loading")}})
        return spec


def _api_key_settings() -> Settings | None:
    """The settings when an API key is set (None without one, or when the settings are invalid:
    the deployment hook reports those)."""
    try:
        settings = Settings.from_env()
    except SettingsError:
        return None
    return settings if settings.api_key else None


# ----------------------------------------------------------------------------- GET /profile
async def _profile(request):
    svc = bentoml.get_current_service()
    try:
        engine = svc.loader.engine()
    except NotReady as e:
        return JSONResponse(e.payload(), status_code=e.status, headers=e.headers)
    return JSONResponse(engine.profile_view())


profile_app = Starlette(routes=[Route("/profile", _profile, methods=["GET"])])


# ----------------------------------------------------------------------------- the service
@bentoml.asgi_app(profile_app, path="/")
@bentoml.service(name="StretchySnake", service_class=_Service,
                 traffic={"timeout": 300})
class StretchySnake:
    """Budget-aware video action recognition on a flexible VideoMamba."""

    @bentoml.on_deployment
    def check_settings() -> None:
        """Runs once in `bentoml serve` before any worker starts: a missing or unreadable
        checkpoint, labels file or profile stops the server with one clear message instead of
        workers restarting forever."""
        from model import CheckpointError, load_checkpoint
        from serving.engine import EngineError, load_labels
        from serving.selector import ProfileError, ProfileTable
        from serving.tables import reconcile

        try:
            settings = Settings.from_env()
            settings.check_checkpoint()
            net = load_checkpoint(settings.checkpoint, map_location="cpu")
            load_labels(settings.labels, net)
            if settings.profile is not None:
                if not settings.profile.is_file():
                    raise EngineError(f"profile table not found: {settings.profile} "
                                      "(from STRETCHYSNAKE_PROFILE)")
                reconcile(ProfileTable.load(settings.profile), net)  # configs it can run
        except (SettingsError, CheckpointError, EngineError, ProfileError, OSError) as e:
            raise SystemExit(f"StretchySnake cannot start: {e}") from None

    def __init__(self) -> None:
        logging.getLogger("stretchysnake").setLevel(logging.INFO)
        from serving.metrics import get_metrics  # in the worker: prometheus in multiprocess mode

        self.settings = Settings.from_env()
        metrics = get_metrics()
        self.loader = Loader(self.settings, on_change=metrics.scheduled)
        self.handler = ClassifyHandler(self.loader, self.settings, metrics)
        self._draining: asyncio.Task | None = None

    @bentoml.on_startup
    async def start_loading(self) -> None:
        log.info("StretchySnake worker %d: loading %s in the background", os.getpid(),
                 self.settings.checkpoint)
        if self.settings.api_key:
            log.info("an API key is required on %s",
                     ", ".join(protected_paths(self.settings.metrics_need_key)))
        self.loader.start()
        self._drain_on_sigterm(asyncio.get_running_loop())

    def _drain_on_sigterm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put a drain in front of uvicorn's SIGTERM handler (installed before this hook runs,
        in the main thread): uvicorn's handler runs once the worker has drained."""
        uvicorn_exit = signal.getsignal(signal.SIGTERM)
        if not callable(uvicorn_exit):
            return

        async def drain_then_exit(signum):
            log.warning("SIGTERM: worker %d drains (new requests get 503; up to %g s for the %d "
                        "taken)", os.getpid(), self.settings.drain_s, self.handler.inflight)
            drained = await self.handler.drain(self.settings.drain_s)
            log.warning("worker %d %s; stopping", os.getpid(), "drained" if drained else
                        f"still had {self.handler.inflight} requests after "
                        f"{self.settings.drain_s:g} s")
            uvicorn_exit(signum, None)

        def start_draining(signum):
            self._draining = loop.create_task(drain_then_exit(signum))

        def on_sigterm(signum, frame):
            # Once is enough: BentoML's circus relays the SIGTERM that `kill` or a process-group
            # signal already delivered here.
            if self.handler.admission.draining:
                return
            self.handler.admission.start_draining()
            # the handler interrupts the loop's thread: the task is created from the loop
            loop.call_soon_threadsafe(start_draining, signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    @bentoml.on_shutdown
    def remove_leftovers(self) -> None:
        """Uploads of this process still on disk (none unless a request was killed mid-way);
        the decoding processes are stopped."""
        with contextlib.suppress(Exception):
            self.handler.close()
        with contextlib.suppress(Exception):
            self.loader.close()
        directory = self.settings.tmpdir
        for path in directory.glob(f"upload-{os.getpid()}-*") if directory.is_dir() else ():
            with contextlib.suppress(OSError):
                path.unlink()

    def __is_ready__(self) -> bool:
        return self.loader.ready and not self.handler.admission.draining

    def __is_alive__(self) -> bool:
        return self.loader.alive

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, ctx: bentoml.Context, video: Optional[Path] = None,
                       **options) -> ClassifyOutput:
        """Classify a video under a latency (`budget_ms`) or compute (`budget_gflops`) budget:
        the most accurate profiled (frames, pixels, patch) configuration and decode mode
        predicted to fit runs. Options come from the query string and/or the form (the
        arguments here are BentoML's, left unused: the handler reads the request itself)."""
        answer = await self.handler.handle(ctx.request)
        ctx.response.status_code = answer.status  # BentoML applies it to the response
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


_keyed = _api_key_settings()
if _keyed is not None:  # checked before any body is read (serving.auth)
    StretchySnake.add_asgi_middleware(
        ApiKeyMiddleware, key=_keyed.api_key,
        protected=protected_paths(_keyed.metrics_need_key))
