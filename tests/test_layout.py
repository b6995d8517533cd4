"""The direction of imports (docs/design.md section 3): serving, training and the benchmarks use
model and video; model and video use nothing else of the repository; common is used by all and
uses nothing. Read from the source with ast, so that a lazy import inside a function counts."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "model", "video", "training", "serving", "benchmarks")
ALLOWED = {
    "common": set(),
    "model": {"common"},
    "video": {"common"},
    "training": {"common", "model", "video"},
    "serving": {"common", "model", "video"},
    "benchmarks": {"common", "model", "video", "training", "serving"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


def test_imports_flow_one_way():
    wrong = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            bad = _imported_packages(path) - ALLOWED[package] - {package}
            if bad:
                wrong.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from serving.engine import Engine\n    import video.probe\n")
    assert _imported_packages(module) == {"serving", "video"}
