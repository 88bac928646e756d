"""Where the commands write: an output never replaces an input, an earlier run is replaced only
with --overwrite and then as a whole, and a failed run leaves nothing behind."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


from analyses import cka, extract, report
from repsim.store import ActivationFile
import training.checks
from training.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def tree(root):
    """Every path under ``root`` with the bytes of its files."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in root.rglob("*")}


def _cka(tiny_checkpoints, out, cache, *extra):
    cka.main(["--a", str(tiny_checkpoints["a"]), "--b", *extra, "--n", "100",
              "--out", str(out), "--cache", str(cache)])


def test_extract_replaces_an_existing_file_only_with_overwrite(tiny_checkpoints, tmp_path,
                                                               capsys):
    out = tmp_path / "old.h5"
    out.write_text("an older file")
    argv = ["--ckpt", str(tiny_checkpoints["a"]), "--out", str(out), "--n", "100"]
    with pytest.raises(SystemExit):
        extract.main(argv)
    assert "pass --overwrite" in capsys.readouterr().err and out.read_text() == "an older file"
    extract.main([*argv, "--overwrite"])
    with ActivationFile(out) as f:
        assert f.n == 100


def test_a_second_run_replaces_the_first_as_a_whole(tiny_checkpoints, tmp_path, capsys):
    a, b = (str(tiny_checkpoints[k]) for k in "ab")
    out, fresh, cache = tmp_path / "out", tmp_path / "fresh", tmp_path / "cache"
    _cka(tiny_checkpoints, out, cache, b, a)
    first = tree(out)
    with pytest.raises(SystemExit) as info:
        _cka(tiny_checkpoints, out, cache, b)
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert tree(out) == first   # refused: nothing changed
    _cka(tiny_checkpoints, out, cache, b, "--overwrite")
    _cka(tiny_checkpoints, fresh, cache, b)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    for name in ("a__vs__b.json", "layer_matched.csv"):
        assert (out / name).read_text() == (fresh / name).read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging left


def test_overwrite_never_deletes_files_the_earlier_run_did_not_write(tiny_checkpoints, tmp_path,
                                                                      capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _cka(tiny_checkpoints, out, cache, str(tiny_checkpoints["b"]))
    (out / "mine").mkdir()
    (out / "mine" / "notes.txt").write_text("the user's own")
    before = tree(out)
    with pytest.raises(SystemExit) as info:
        _cka(tiny_checkpoints, out, cache, str(tiny_checkpoints["b"]), "--overwrite")
    assert info.value.code == 2
    assert "did not write (mine/notes.txt)" in capsys.readouterr().err
    assert tree(out) == before


def test_the_current_folder_is_a_valid_out_when_empty(tiny_checkpoints, tmp_path,
                                                       monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    cka.main(["--a", str(tiny_checkpoints["a"]), "--b", str(tiny_checkpoints["b"]), "--n", "100",
              "--out", ".", "--cache", str(tmp_path / "cache")])
    assert (tmp_path / "here" / "a__vs__b.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checkpoints_of_one_name_in_two_folders_keep_both_lines(tiny_checkpoints, tmp_path):
    files = []
    for key, folder in (("a", "s0"), ("b", "s1")):
        (tmp_path / folder).mkdir()
        ckpt = tmp_path / folder / "m.pt"
        ckpt.write_bytes(tiny_checkpoints[key].read_bytes())
        files.append(str(tmp_path / f"{folder}_m.h5"))
        extract.main(["--ckpt", str(ckpt), "--n", "100", "--out", files[-1]])
    out = tmp_path / "out"
    cka.main(["--a", str(tiny_checkpoints["a"]), "--b", *files, "--n", "100", "--out", str(out),
              "--cache", str(tmp_path / "cache")])
    header = (out / "layer_matched.csv").read_text().splitlines()[0].split(",")
    assert len(header) == 3 and len(set(header)) == 3


def test_an_empty_folder_is_a_valid_out(tiny_checkpoints, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    _cka(tiny_checkpoints, out, tmp_path / "cache", str(tiny_checkpoints["b"]))
    assert (out / "a__vs__b.json").exists() and (out / "args.json").exists()


def test_a_failed_overwrite_keeps_the_earlier_run(tiny_checkpoints, tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _cka(tiny_checkpoints, out, cache, str(tiny_checkpoints["b"]))
    before = tree(tmp_path)

    def fail(*args):
        raise RuntimeError("the machine failed half-way")

    monkeypatch.setattr(cka, "write_layer_matched", fail)
    with pytest.raises(RuntimeError, match="half-way"):
        _cka(tiny_checkpoints, out, cache, str(tiny_checkpoints["b"]), "--overwrite")
    assert tree(tmp_path) == before


def test_a_failed_run_leaves_no_folders(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    from analyses import probe

    def fail(*args, **kwargs):
        raise ValueError("the probe failed after the CKA maps were written")

    monkeypatch.setattr(probe, "probe_layers", fail)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]),
                     "--out", "new/deep/report", "--cache", "acts", "--n", "100",
                     "--n-train", "300", "--n-test", "100"])
    assert "error: the probe failed" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["acts"]   # the cache is kept


@pytest.fixture(scope="module")
def unequal_checkpoints(tmp_path_factory, tiny_checkpoints):
    """A resnet8 (4 layers) and a resnet14 (7 layers): no layer-matched CKA between them."""
    deeper = tmp_path_factory.mktemp("deeper") / "c.pt"
    train(TrainConfig(arch="resnet14", width=4, dataset="digits", epochs=1, batch_size=64,
                      out=str(deeper), progress=False))
    return str(tiny_checkpoints["a"]), str(deeper)


def test_report_over_an_earlier_report_reads_only_this_run(unequal_checkpoints, tmp_path,
                                                           tiny_checkpoints):
    out, cache = tmp_path / "report", tmp_path / "cache"
    common = ["--n", "100", "--n-train", "300", "--n-test", "100", "--cache", str(cache),
              "--out", str(out)]
    report.main(["--ckpt", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]), *common])
    assert (out / "cka" / "layer_matched.png").exists()
    report.main(["--ckpt", *unequal_checkpoints, *common, "--overwrite"])
    assert not (out / "cka" / "layer_matched.png").exists()
    assert not (out / "cka" / "a__vs__b.png").exists()
    text = (out / "report.md").read_text()
    assert "Layer-matched" not in text and "(cka/a__vs__c.png)" in text
    assert json.loads((out / "args.json").read_text())["ckpt"] == list(unequal_checkpoints)
    matrix = np.array(json.loads((out / "cka" / "a__vs__c.json").read_text())["matrix"])
    assert matrix.shape == (4, 7)


SLOW_CKA = """
import sys, time
from analyses import activations, cka
real = activations.run_extraction
def slow(*args, **kwargs):
    print("extracting", flush=True)
    time.sleep(120)
    return real(*args, **kwargs)
activations.run_extraction = slow
cka.main(sys.argv[1:])
"""


def test_sigterm_during_a_run_leaves_nothing_behind(tiny_checkpoints, tmp_path):
    run = subprocess.Popen([sys.executable, "-c", SLOW_CKA, "--a", str(tiny_checkpoints["a"]),
                            "--b", str(tiny_checkpoints["b"]), "--n", "100", "--out", "new/o",
                            "--cache", "acts"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.stdout.readline() == "extracting\n"   # staged, the cache file locked
    assert any(tmp_path.rglob(".o.*.tmp")) and any(tmp_path.rglob(".*.lock"))
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143, run.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_refuses_new_files_is_found_by_trying(tmp_path, monkeypatch):
    from analyses import paths

    folder = tmp_path / "immutable"   # no file can be made in it, even by root
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(paths.OutputError, match=r"immutable: it is read-only"):
            paths.check_output(folder / "o", folder=True, overwrite=False, inputs={})
        # where permissions look right (e.g. NFS, ACLs), creating a file is what tells
        monkeypatch.setattr(training.checks, "read_only", lambda path: False)
        with pytest.raises(paths.OutputError, match=r"--out .*immutable/o: cannot write in "
                                                    r".*immutable \(Operation not permitted\)"):
            paths.check_output(folder / "o", folder=True, overwrite=False, inputs={})
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
