"""analyses.report's local-learning sections: aux nets, gradient alignment, stitching."""
import csv

from analyses import report, report_sections
from training.train import TrainConfig, train


def test_report_has_the_local_learning_sections(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(report_sections, "REPORT_AUX", {"n_train": 200, "n_test": 100})
    monkeypatch.setattr(report_sections, "REPORT_GRADALIGN", {"batches": 2, "batch_size": 16})
    monkeypatch.setattr(report_sections, "REPORT_STITCH", {"steps": 2, "n_train": 64, "n_test": 100})
    dgl = tmp_path / "dgl.pt"
    train(TrainConfig(method="dgl", K=3, arch="resnet8", width=4, dataset="digits", epochs=1,
                      subset=64, batch_size=64, out=str(dgl), progress=False))
    out = tmp_path / "report"
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(dgl), "--n", "100", "--n-train",
                 "200", "--n-test", "100", "--out", str(out), "--cache", str(tmp_path / "c")])
    text = (out / "report.md").read_text()
    for heading, figure in (("## Aux nets against linear probes", "aux/aux.png"),
                            ("## Gradient alignment with backprop", "gradalign/gradalign.png"),
                            ("## Model stitching", "stitch/penalty.png")):
        assert heading in text and f"]({figure})" in text and (out / figure).exists()
    with (out / "stitch" / "dgl" / "stitch.csv").open() as f:
        penalty = float(next(csv.DictReader(f))["penalty"])
    assert f"| stem | {penalty:.4f} |" in text
    with (out / "aux" / "aux.csv").open() as f:
        first = [r for r in csv.DictReader(f) if r["method"] == "dgl"][0]
    assert f"{float(first['aux_acc']):.3f} / {float(first['probe_acc']):.3f}" in text


def test_skip_local_leaves_the_sections_out(tiny_checkpoints, tmp_path):
    out = tmp_path / "report"
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]), "--n", "100",
                 "--n-train", "200", "--n-test", "100", "--out", str(out), "--cache",
                 str(tmp_path / "c"), "--skip-local"])
    assert "## Model stitching" not in (out / "report.md").read_text()
    assert not (out / "aux").exists()
