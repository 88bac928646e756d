"""Every command against a table of bad inputs: exit status 2, one line on stderr that names
the problem, no traceback, and no file created, changed or removed.

Each row runs in a workspace (the current folder) holding two tiny checkpoints ``a.pt`` and
``b.pt`` and the things users get wrong: a file that is not a checkpoint, a folder, existing
and read-only files, a symbolic and a hard link to a checkpoint, an earlier run's output
folder, a folder of other files, and a folder nobody can write in.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyses import cka, extract, probe, report
from training import train

REPO = Path(__file__).resolve().parents[1]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
TRAIN = ["--dataset", "digits", "--arch", "resnet8", "--width", "4", "--epochs", "1",
         "--batch-size", "64", "--no-progress"]
COMMANDS = {"extract": extract.main, "cka": cka.main, "probe": probe.main,
            "report": report.main, "training.train": train.main}
BASE = {"extract": ["--n", "60"], "cka": ["--n", "60"],
        "probe": ["--n-train", "100", "--n-test", "60"],
        "report": ["--n", "60", "--n-train", "100", "--n-test", "60"], "training.train": TRAIN}


def make_unwritable(folder: Path) -> None:
    """No write permission; for root (whom permissions do not stop) also immutable, where
    the file system supports it."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)


def make_writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.fixture
def workspace(tmp_path, tiny_checkpoints, monkeypatch):
    """The current folder, holding what the rows name (see the module docstring)."""
    for name in "ab":
        shutil.copy(tiny_checkpoints[name], tmp_path / f"{name}.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    (tmp_path / "ckptdir").mkdir()
    (tmp_path / "old.h5").write_text("an older file")
    (tmp_path / "ro.h5").write_text("a read-only file")
    (tmp_path / "ro.h5").chmod(0o444)
    (tmp_path / "alias.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "hard.pt").hardlink_to(tmp_path / "a.pt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text("{}")
    (tmp_path / "run" / "a__vs__b.png").write_text("an earlier run's heatmap")
    (tmp_path / "run" / ".run-files").write_text('["a__vs__b.png", "args.json"]')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("the user's own files")
    (tmp_path / "afile").write_text("a file where a folder is expected")
    locked = tmp_path / "locked"
    locked.mkdir()
    make_unwritable(locked)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    make_writable(locked)


def listing(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: (size, mtime) of files and links, None for folders."""
    return {str(p.relative_to(root)): None if p.is_dir() and not p.is_symlink()
            else (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def error_line(err: str) -> str:
    """The one line of ``err`` that reports the error (argparse prints usage above it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert err.rstrip("\n").endswith(lines[0])
    return lines[0]


ROWS = [
    # extract: --out is a file
    ("extract", ["--ckpt", "a.pt", "--out", "a.pt"], ["--out a.pt", "--ckpt a.pt", "input"]),
    ("extract", ["--ckpt", "a.pt", "--out", "ckptdir/../a.pt", "--overwrite"], ["input"]),
    ("extract", ["--ckpt", "a.pt", "--out", "alias.pt", "--overwrite"], ["alias.pt", "input"]),
    ("extract", ["--ckpt", "a.pt", "--out", "hard.pt", "--overwrite"], ["hard.pt", "input"]),
    ("extract", ["--ckpt", "a.pt", "--out", "old.h5"], ["old.h5", "exists", "--overwrite"]),
    ("extract", ["--ckpt", "a.pt", "--out", "ro.h5", "--overwrite"], ["ro.h5", "read-only"]),
    ("extract", ["--ckpt", "a.pt", "--out", "ckptdir"], ["ckptdir", "is a folder"]),
    ("extract", ["--ckpt", "a.pt", "--out", "notes/notes.txt", "--overwrite", "--data-root",
                 "notes"], ["notes/notes.txt", "--data-root notes"]),
    ("extract", ["--ckpt", "a.pt", "--out", "locked/a.h5"], ["locked", "cannot write"]),
    ("extract", ["--ckpt", "a.pt", "--out", "afile/a.h5"], ["afile", "is a file"]),
    ("extract", ["--ckpt", "ckptdir", "--out", "x.h5"], ["ckptdir", "is a folder"]),
    ("extract", ["--ckpt", "missing.pt", "--out", "x.h5"], ["missing.pt", "does not exist"]),
    ("extract", ["--ckpt", "junk.pt", "--out", "x.h5"], ["junk.pt", "not a PyTorch checkpoint"]),
    ("extract", ["--ckpt", "a.pt", "--out", "new/x.h5", "--layers", "layers.nope"],
     ["layers.nope"]),
    ("extract", ["--ckpt", "a.pt", "--out", "x.h5", "--device", "foo"], ["--device", "'foo'"]),
    ("extract", ["--ckpt", "a.pt", "--out", "x.h5", "--device", "cuda:99"],
     ["--device", "'cuda:99'"]),
    ("extract", ["--ckpt", "a.pt", "--out", "x.h5", "--batch-size", "0"],
     ["--batch-size", "'0'"]),
    ("extract", ["--ckpt", "a.pt", "--out", "x.h5", "--n", "-5"], ["--n", "'-5'"]),
    ("extract", ["--ckpt", "a.pt", "--out", "x.h5", "--threads", "-2"], ["--threads", "'-2'"]),
    # cka: --out is a folder, --cache a folder the command writes
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "run"], ["run", "earlier run", "--overwrite"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "notes", "--overwrite"],
     ["notes", "args.json"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "afile"], ["--out afile", "is a file"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "a.pt"], ["--out a.pt", "--a a.pt"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", ".", "--overwrite"], ["--out .", "--a a.pt"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "o", "--cache", "o/acts"],
     ["--out o", "--cache o/acts"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "o", "--cache", "afile"],
     ["--cache afile", "is a file"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "o", "--cache", "locked/acts"],
     ["--cache locked/acts", "cannot write"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "locked/o"],
     ["--out locked/o", "cannot write"]),
    ("cka", ["--a", "a.pt", "--b", "missing.pt", "--out", "o"], ["missing.pt", "does not exist"]),
    ("cka", ["--a", "ckptdir", "--b", "b.pt", "--out", "o"], ["ckptdir", "is a folder"]),
    ("cka", ["--a", "a.pt", "--b", "b.pt", "--out", "o", "--device", "foo"],
     ["--device", "'foo'"]),
    # probe
    ("probe", ["--ckpt", "a.pt", "--out", "run"], ["run", "--overwrite"]),
    ("probe", ["--ckpt", "a.pt", "--out", "o", "--cache", "afile"], ["--cache afile", "is a file"]),
    ("probe", ["--ckpt", "a.pt", "--out", "o", "--cache", "a.pt"], ["--cache a.pt"]),
    ("probe", ["--ckpt", "junk.pt", "--out", "o"], ["junk.pt", "not a PyTorch checkpoint"]),
    ("probe", ["--ckpt", "a.pt", "--out", "o", "--match-dim", "0"], ["match_dim", "0"]),
    ("probe", ["--ckpt", "a.pt", "--out", "new/o", "--layers", "layers.nope"], ["layers.nope"]),
    ("probe", ["--ckpt", "a.pt", "--out", "o", "--max-memory", "0"], ["--max-memory", "'0'"]),
    pytest.param("probe", ["--ckpt", "a.pt", "--out", "o", "--device", "cuda"],
                 ["--device", "'cuda'"], marks=NO_GPU),
    # report
    ("report", ["--ckpt", "a.pt", "--out", "o"], ["--ckpt", "at least two"]),
    ("report", ["--ckpt", "a.pt", "b.pt", "--out", "run"], ["run", "earlier run", "--overwrite"]),
    ("report", ["--ckpt", "a.pt", "b.pt", "--out", "b.pt"], ["--out b.pt", "--ckpt b.pt"]),
    ("report", ["--ckpt", "a.pt", "b.pt", "--out", "o", "--cache", "o/acts"],
     ["--out o", "--cache o/acts"]),
    ("report", ["--ckpt", "a.pt", "ckptdir", "--out", "o"], ["ckptdir", "is a folder"]),
    ("report", ["--ckpt", "a.pt", "b.pt", "--out", "o", "--threads", "-2"],
     ["--threads", "'-2'"]),
    # training
    ("training.train", ["--out", "m.pt", "--lr", "nan"], ["--lr", "nan"]),
    ("training.train", ["--out", "m.pt", "--K", "0"], ["--K", "0"]),
    ("training.train", ["--out", "m.pt", "--threads", "-2"], ["--threads", "-2"]),
    ("training.train", ["--out", "m.pt", "--device", "foo"], ["--device", "foo"]),
    ("training.train", ["--out", "locked/m.pt"], ["locked"]),
    ("training.train", ["--out", "m.pt", "--log", "m.pt"], ["--log", "m.pt"]),
]


@pytest.mark.parametrize("command,argv,names", ROWS)
def test_bad_input_is_one_line_and_leaves_no_trace(command, argv, names, workspace, capsys):
    before = listing(workspace)
    with pytest.raises(SystemExit) as info:
        COMMANDS[command]([*BASE[command], *argv])
    line = error_line(capsys.readouterr().err)
    assert info.value.code == 2
    for name in names:
        assert name in line
    assert listing(workspace) == before


# one row per command through `python -m`: the real entry point, exit status and stderr
ENTRY_ROWS = [
    ("analyses.extract", ["--ckpt", "ckptdir", "--out", "x.h5"], "is a folder"),
    ("analyses.cka", ["--a", "a.pt", "--b", "b.pt", "--device", "foo"], "'foo'"),
    ("analyses.probe", ["--ckpt", "missing.pt"], "does not exist"),
    ("analyses.report", ["--ckpt", "a.pt", "b.pt", "--out", "run"], "--overwrite"),
    ("training.train", [*TRAIN, "--device", "foo"], "foo"),
]


@pytest.mark.parametrize("module,argv,name", ENTRY_ROWS)
def test_python_m_exits_2_with_one_line(module, argv, name, workspace):
    before = listing(workspace)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert name in error_line(done.stderr)
    assert listing(workspace) == before


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    from analyses import cli

    def broken(settings):
        raise KeyError("a bug, not a bad input")

    with pytest.raises(KeyError, match="a bug"):
        cli.run_cli(report.parser, broken, ["--ckpt", "a.pt", "b.pt"])
