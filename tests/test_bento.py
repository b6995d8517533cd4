"""The Bento is what was tested (issue 30): `bentoml build` from bentofile.yaml pins the CPU torch
build and the PyAV release the profiles were measured with, and `bentoml serve
stretchysnake:latest` serves the bundled checkpoint from the Bento's own copy of the code,
checkpoint and profiles (not from the repository), answering a real clip."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.testing import ServerFailed, serve
from video.synthetic import CLASSES, encode_mp4, render_clip

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    root = tmp_path_factory.mktemp("bento")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRETCHYSNAKE_")}
    env.update({"BENTOML_HOME": str(root / "home"), "BENTOML_DO_NOT_TRACK": "True",
                "TMPDIR": str(root), "OMP_NUM_THREADS": "1",
                "STRETCHYSNAKE_CACHE": str(root / "cache"), "STRETCHYSNAKE_THREADS": "1"})
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [store] = (root / "home" / "bentos" / "stretchysnake").glob("*/")
    return {"root": root, "env": env, "path": store}


def test_the_bento_pins_the_cpu_torch_and_pyav_that_were_measured(bento):
    python = bento["path"] / "env" / "python"
    lines = (python / "requirements.txt").read_text().splitlines()
    # what the image installs (env/docker/Dockerfile: uv pip install -r requirements.txt)
    assert "torch==2.13.0+cpu" in lines and "av==18.1.0" in lines
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert not (python / "requirements.lock.txt").exists()
    src = bento["path"] / "src"
    assert (src / "checkpoints" / "stretchysnake_nano").is_dir()
    assert list((src / "profiles").glob("*.json"))
    assert not (src / "tests").exists() and not (src / "data").exists()


def test_bentoml_serve_of_the_bento_classifies_a_clip(bento):
    clip = bento["root"] / "clip.mp4"
    encode_mp4(render_clip(CLASSES[3], np.random.default_rng(1), size=128, frames=32), str(clip))
    try:
        with serve(bento["env"], bento["root"] / "serve.log", cwd=bento["root"],
                   service="stretchysnake:latest", timeout_s=180) as running:
            with httpx.Client(base_url=running.url, timeout=60) as client:
                profile = client.get("/profile").json()
                r = client.post("/classify", params={"budget_ms": 2000},
                                files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    except ServerFailed as e:
        pytest.fail(str(e))
    assert r.status_code == 200, r.text
    assert r.json()["labels"][0]["label"] in CLASSES
    # the Bento's own copy of the checkpoint, not the repository's
    assert str(bento["path"]) in str(profile)
