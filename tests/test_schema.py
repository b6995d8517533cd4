"""Schema-driven fuzzing of the real server (issue 7, part 3): schemathesis generates requests
from the service's own OpenAPI document (`/docs.json`) and sends them to a real `bentoml serve`
process (serving/testing.py) running a tiny checkpoint.

Generated: for POST /classify, the query parameters (budget_ms, budget_gflops, top_k, strict,
frames, pixels, patch) and the multipart form (`video` and the same options as JSON-encoded
fields), in schemathesis' positive mode (values the schema allows) and negative mode (values it
forbids: wrong types, out of range, missing `video`...). The `video` part is either what
schemathesis generated (random bytes) or one of: a real small H.264 clip, the same clip
truncated, text, empty, or random junk; the GET operations (/profile and BentoML's /healthz,
/livez, /readyz, /metrics) are called too.

Checked for every response (schemathesis checks):
    not_a_server_error          no 5xx, ever
    status_code_conformance     the status is one the document lists for the operation
    content_type_conformance    the Content-Type is one the document lists for that status
    response_schema_conformance the JSON body validates against the documented schema of that
                                status (200: ClassifyOutput; 4xx: {error, code, status, detail})
and afterwards: the server is alive and ready, classifies a real clip, logged no traceback and
counted no 5xx in its metrics.

Not checked: that schema-valid requests are accepted (a schema-valid upload may still be junk
bytes: 415 is right) and that schema-invalid ones are refused (the server is lenient on purpose:
`strict=yes`, a JSON string "8" for a number in the form, see serving/options.py).

Bounded for CI: a fixed, derandomized number of examples (about 20 s with the server start);
STRETCHYSNAKE_FUZZ_EXAMPLES=N runs N random examples per mode instead.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")  # the dev extra
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_schema_conformance,
                                               status_code_conformance)

from serving.testing import ServerFailed, serve, server_env, tiny_checkpoint  # noqa: E402
from video.synthetic import CLASSES, encode_mp4, render_clip  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LABELS = ["left", "right", "up", "down"]
# (frames, pixels, patch) -> accuracy; small, so each valid request costs a few ms of model time
CONFIGS = {(4, 32, 8): 0.5, (8, 32, 8): 0.6, (8, 64, 16): 0.7}
MAX_UPLOAD = 200_000
LONG_RUN = int(os.environ.get("STRETCHYSNAKE_FUZZ_EXAMPLES", "0") or 0)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def fuzz_settings(ci_examples: int):
    return settings(max_examples=LONG_RUN or ci_examples, derandomize=not LONG_RUN,
                    database=None, deadline=timedelta(seconds=30),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    print_blob=True)


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny checkpoint and its profile (as tests/test_service.py makes them) and uploads."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("schema")
    _, ckpt, profile = tiny_checkpoint(root, LABELS, CONFIGS)
    clip = root / "clip.mp4"
    encode_mp4(render_clip(CLASSES[0], np.random.default_rng(0), size=48, frames=8), str(clip))
    data = clip.read_bytes()
    uploads = {"clip": data, "truncated": data[:len(data) // 2], "empty": b"",
               "text": b"this is a text file, not a video\n" * 8,
               "junk": np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes()}
    return {"root": root, "ckpt": ckpt, "profile": profile, "uploads": uploads}


@pytest.fixture(scope="module")
def server(assets):
    root = assets["root"]
    env = server_env(root, assets["ckpt"], assets["profile"], MAX_UPLOAD_BYTES=MAX_UPLOAD)
    try:
        with serve(env, root / "server.log", timeout_s=90) as running:
            yield running
    except ServerFailed as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def document(server) -> dict:
    return httpx.get(server.url + "/docs.json", timeout=30).json()


@pytest.fixture(scope="module")
def api(document):
    """The server's own OpenAPI document, as schemathesis reads it (3.1: its schemas are
    pydantic's JSON Schema 2020-12, and the service says so)."""
    return schemathesis.openapi.from_dict(document)


def _call(case, server):
    # Generous timeout: a valid clip runs the model, on 2 cores shared with other jobs.
    return case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)


# ----------------------------------------------------------------------------- fuzzing
UPLOADS = ("clip", "truncated", "empty", "text", "junk")
# None: keep the bytes schemathesis generated for the `video` part
video_choice = st.one_of(st.sampled_from(UPLOADS + (None,)), st.binary(min_size=1,
                                                                       max_size=256))
FILTERS = ("frames", "pixels", "patch")


def _adjust(case, choice, keep_filters: bool, assets) -> str:
    """Put the chosen upload in the `video` part; without keep_filters, drop the frames /
    pixels / patch restrictions, which random values almost never satisfy (422), so that some
    fuzzed budgets and top_k reach the model. Returns a name for the statistics."""
    body = case.body if isinstance(case.body, dict) else {}
    if not keep_filters:
        for name in FILTERS:
            body.pop(name, None)
            if case.query:
                case.query.pop(name, None)
    if choice is None or "video" not in body:
        return "generated"
    body["video"] = assets["uploads"][choice] if isinstance(choice, str) else choice
    return choice if isinstance(choice, str) else "random"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_classify_conforms_to_its_schema(api, server, assets, mode):
    operation = api["/classify"]["POST"]
    generated = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen: dict = {}

    def count(key):
        seen[key] = seen.get(key, 0) + 1

    @fuzz_settings(ci_examples=200)
    @given(case=generated, choice=video_choice, keep_filters=st.booleans())
    def run(case, choice, keep_filters):
        upload = _adjust(case, choice, keep_filters, assets)
        response = _call(case, server)
        count(response.status_code)
        count("upload: " + upload)
        for name in case.query or ():
            count("query: " + name)

    run()
    print(mode, seen)  # shown with -s or on failure
    # what the run covered: some requests reach the model, some are refused
    assert any(isinstance(k, int) and k >= 400 for k in seen), seen
    if mode == "positive":
        assert 200 in seen, seen


def test_valid_requests_answer_200_in_the_documented_shape(api, server, assets):
    """Hand-made cases through the same checks: the 200 body and each error body."""
    operation = api["/classify"]["POST"]
    clip = assets["uploads"]["clip"]
    cases = [
        ({"budget_gflops": 0.01, "top_k": 2}, {"video": clip}, 200),
        ({"frames": 8, "pixels": 64, "patch": 16, "strict": True}, {"video": clip}, 200),
        ({}, {"video": clip, "budget_ms": 60000, "top_k": 3}, 200),
        ({"budget_ms": 0.001, "strict": True}, {"video": clip}, 422),
        ({"frames": 5}, {"video": clip}, 422),
        ({}, {"video": assets["uploads"]["truncated"]}, 400),
        ({}, {"video": assets["uploads"]["text"]}, 415),
        ({}, {"video": clip + b"\0" * MAX_UPLOAD}, 413),
    ]
    for query, body, status in cases:
        case = operation.Case(query=query, body=body, media_type="multipart/form-data")
        response = _call(case, server)
        assert response.status_code == status, (query, response.text)


def test_other_operations_conform_to_their_schema(api, server):
    generated = api.include(method="GET").as_strategy()

    @fuzz_settings(ci_examples=20)
    @given(case=generated)
    def run(case):
        _call(case, server)

    run()


# ----------------------------------------------------------------------------- the document itself
def _schemas(node):
    """Every dict in the document (schemas and the rest)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def test_document_declares_the_dialect_it_uses(document):
    """BentoML writes JSON Schema 2020-12 (numeric exclusiveMinimum, type null), OpenAPI 3.1's
    dialect; a document declaring 3.0 with it is rejected by strict 3.0 tools."""
    assert document["openapi"].startswith("3.1")
    exclusive = [d["exclusiveMinimum"] for d in _schemas(document) if "exclusiveMinimum" in d]
    assert exclusive and not any(isinstance(v, bool) for v in exclusive)  # 2020-12 form only


def test_documented_200_body_allows_an_unknown_accuracy(document):
    schema = document["paths"]["/classify"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    accuracy = schema["properties"]["accuracy"]
    allowed = {accuracy.get("type")} | {s.get("type") for s in accuracy.get("anyOf", [])}
    assert "null" in allowed or accuracy.get("nullable") is True, accuracy


# ----------------------------------------------------------------------------- afterwards
def _metric(text: str, name: str, prefix: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and prefix in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_server_is_healthy_afterwards(server, assets):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 200
        r = client.post("/classify?top_k=1",
                        files={"video": ("clip.mp4", assets["uploads"]["clip"], "video/mp4")})
        assert r.status_code == 200 and len(r.json()["labels"]) == 1, r.text
        metrics = client.get("/metrics").text
    assert _metric(metrics, "stretchysnake_errors_total", 'status="5') == 0
    assert _metric(metrics, "stretchysnake_errors_total") > 0  # the fuzzing did reach it
    assert server.proc.poll() is None
    assert "Traceback" not in server.log.read_text(errors="replace")
