"""benchmarks/table1.py: the evaluation.json record a bundled checkpoint carries."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import table1  # noqa: E402
from model import build_model, load_checkpoint, save_checkpoint  # noqa: E402


def test_evaluation_record_reads_native_best_and_training_from_the_checkpoint(tmp_path):
    net = build_model("nano", num_classes=2, depth=1, embed_dim=16)
    history = [{"epoch": 1, "loss": 0.7, "val_top1_native": 0.5}]
    save_checkpoint(net, tmp_path, labels=["a", "b"], extra={"command": "train ...", "history": history})
    net = load_checkpoint(tmp_path)
    cfg = net.config
    rows = [{"model": "v", "frames": cfg.num_frames, "pixels": cfg.img_size, "patch": cfg.patch_size, "top1": 40.0},
            {"model": "v", "frames": 4, "pixels": 56, "patch": cfg.patch_size, "top1": 10.0},
            {"model": "v (static)", "frames": 4, "pixels": 56, "patch": 8, "top1": 55.0},
            {"model": "other", "frames": 4, "pixels": 56, "patch": 8, "top1": 99.0}]
    record = table1.evaluation_record(net, rows, {"v": "native", "v (static)": "static_tokens"},
                                      samples=[0] * 7, data=table1.DEFAULT_DATA / "manifest.csv")
    assert record["top1_native"] == 40.0
    assert record["top1_best"] == 40.0  # over its own rule's grid; the other rule is reported beside it
    assert [r["top1"] for r in record["grid"]] == [40.0, 10.0]
    assert record["grid_static_tokens_patch"] == [{"frames": 4, "pixels": 56, "patch": 8, "top1": 55.0}]
    assert record["clips"] == 7 and record["training"] == "train ..." and record["val_history"] == history
    assert record["data"].startswith("data/synthetic/manifest.csv (python -m video.synthetic")
