"""``python -m training.train`` with bad input: every expected failure is one line naming the
problem, exit status 2, no traceback, no file written, and it comes before any training work
(parsing errors from argparse, settings and output paths before the data is even loaded)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

import training.train as loop
from tests.test_data import write_fashion_root
from training.train import main

TINY = ["--arch", "resnet8", "--width", "4", "--dataset", "digits", "--epochs", "1",
        "--batch-size", "64", "--no-progress"]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``main(argv)``, which must exit."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training work (data loading, model building) begins."""
    def refuse(*args, **kwargs):
        raise AssertionError("training work began before the bad input was refused")

    monkeypatch.setattr(loop, "load_data", refuse)
    monkeypatch.setattr(loop, "build_model", refuse)


@pytest.mark.parametrize("option, value, expected", [
    ("--lr", "nan", "finite"), ("--lr", "inf", "finite"), ("--lr", "-inf", "finite"),
    ("--lr", "0", "> 0"), ("--lr", "ten", "finite"),
    ("--weight-decay", "nan", "finite"), ("--weight-decay", "-1e-4", ">= 0"),
    ("--momentum", "nan", "finite"), ("--momentum", "1.5", "(0, 1)"),
    ("--pyramid-coeff", "nan", "finite"), ("--pyramid-coeff", "2", "[0, 1]"),
    ("--K", "0", ">= 1"), ("--K", "-3", ">= 1"), ("--aux-depth", "0", ">= 1"),
    ("--threads", "-2", ">= 1"), ("--threads", "0", ">= 1"),
    ("--epochs", "0", ">= 1"), ("--batch-size", "0", ">= 1"), ("--width", "0", ">= 1"),
    ("--eval-batch-size", "0", ">= 1"), ("--subset", "0", ">= 1"),
    ("--warmup-epochs", "-1", ">= 0"),
])
def test_bad_numbers_are_refused_while_parsing(tmp_path, capsys, no_work, option, value,
                                                expected):
    # argparse takes "-inf" and "-1e-4" (not "-2") for options unless joined by "="
    given = [f"{option}={value}"] if value[:1] == "-" and not value[1:].isdigit() else \
        [option, value]
    code, err = run_main([*TINY, "--out", str(tmp_path / "x.pt"), *given], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert f"argument {option}: " in last and expected in last and repr(value) in last
    assert "Traceback" not in err and files_in(tmp_path) == {}


def expect_one_line_error(argv: list[str], capsys, folder: Path, *matches: str) -> None:
    """``main(argv)`` exits with status 2 and one ``error:`` line holding each of ``matches``,
    leaving ``folder`` as it was."""
    before = files_in(folder)
    code, err = run_main(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for text in matches:
        assert text in err, err
    assert files_in(folder) == before


def test_unknown_device_is_refused(tmp_path, capsys, no_work):
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--device", "foo"],
                          capsys, tmp_path, "--device 'foo'", "cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, no_work, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--device", device],
                          capsys, tmp_path, f"--device {device!r}", "no CUDA GPU",
                          "--device cpu")


def test_cuda_index_beyond_the_gpus_is_refused(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--device", "cuda:2"],
                          capsys, tmp_path, "--device 'cuda:2'", "2 GPUs", "cuda:1")


def test_out_that_is_a_directory(tmp_path, capsys, no_work):
    (tmp_path / "runs").mkdir()
    for extra in ([], ["--overwrite"], ["--resume"]):
        expect_one_line_error([*TINY, "--out", str(tmp_path / "runs"), *extra], capsys,
                              tmp_path, f"--out {tmp_path / 'runs'}", "is a directory")


def test_log_that_is_a_directory(tmp_path, capsys, no_work):
    (tmp_path / "logs").mkdir()
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--log",
                           str(tmp_path / "logs")], capsys, tmp_path, "--log", "is a directory")


@pytest.mark.parametrize("log", ["x.pt", "./sub/../x.pt", "link.pt"])
def test_log_equal_to_out_is_refused(tmp_path, capsys, no_work, monkeypatch, log):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(tmp_path / "x.pt")
    for extra in ([], ["--overwrite"], ["--resume"]):
        expect_one_line_error([*TINY, "--out", "x.pt", "--log", log, *extra], capsys,
                              tmp_path, "--log", "same file as --out")


def test_default_log_equal_to_out_is_refused(tmp_path, capsys, no_work):
    """The log defaults to --out with suffix .jsonl: an --out ending in .jsonl is the log."""
    expect_one_line_error([*TINY, "--out", str(tmp_path / "run.jsonl")], capsys, tmp_path,
                          "same file as --out", "--log")


def test_existing_log_is_not_overwritten_silently(tmp_path, capsys, no_work):
    log = tmp_path / "notes.txt"
    log.write_text("my notes")
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--log", str(log)], capsys,
                          tmp_path, f"--log {log} exists", "--overwrite")


def _lock(folder: Path, locked: bool) -> None:
    """Take away (or give back) write permission; for root, whom permissions do not stop,
    also make the folder immutable where the file system supports it."""
    if locked:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if locked else "-i", str(folder)], capture_output=True)
    if not locked:
        folder.chmod(0o755)


@pytest.fixture(params=["chmod", "sysfs"])
def unwritable_folder(request, tmp_path):
    """A folder in which no file can be created: a locked one, or /sys (which refuses new
    files, to root too)."""
    if request.param == "sysfs":
        yield Path("/sys")
        return
    folder = tmp_path / "locked"
    folder.mkdir()
    _lock(folder, True)
    try:
        if os.access(folder, os.W_OK) and _can_create_in(folder):
            pytest.skip("this file system lets this user write into a locked folder")
        yield folder
    finally:
        _lock(folder, False)


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("flag", ["--out", "--log"])
def test_unwritable_folder_is_reported_before_training(tmp_path, capsys, no_work,
                                                       unwritable_folder, flag):
    paths = {"--out": str(tmp_path / "x.pt"), "--log": str(tmp_path / "x.jsonl")}
    paths[flag] = str(unwritable_folder / "sub" / "x.bin")
    expect_one_line_error([*TINY, "--out", paths["--out"], "--log", paths["--log"]],
                          capsys, tmp_path, f"{flag} {paths[flag]}", f"{unwritable_folder}")


def test_folder_below_a_file_is_reported(tmp_path, capsys, no_work):
    (tmp_path / "notes").write_text("a file, not a folder")
    out = tmp_path / "notes" / "x.pt"
    expect_one_line_error([*TINY, "--out", str(out)], capsys, tmp_path, f"--out {out}",
                          "not a folder")


def test_read_only_out_is_not_replaced(tmp_path, capsys, no_work):
    out = tmp_path / "x.pt"
    out.write_bytes(b"protected")
    out.chmod(0o444)
    expect_one_line_error([*TINY, "--out", str(out), "--overwrite"], capsys, tmp_path,
                          f"--out {out}", "read-only")


def test_resume_of_a_file_that_is_no_checkpoint_is_refused_up_front(tmp_path, capsys, no_work):
    out = tmp_path / "x.pt"
    out.write_text("hello")
    expect_one_line_error([*TINY, "--out", str(out), "--resume"], capsys, tmp_path,
                          str(out), "not a PyTorch checkpoint")


def test_resume_with_other_settings_is_refused_up_front(tmp_path, capsys, tiny_checkpoints,
                                                        no_work):
    out = tmp_path / "a.pt"
    out.write_bytes(tiny_checkpoints["a"].read_bytes())
    expect_one_line_error([*TINY, "--out", str(out), "--resume", "--lr", "0.3"], capsys,
                          tmp_path, "--lr 0.3 (checkpoint: 0.1)")


def test_output_equal_to_a_dataset_file_is_refused(tmp_path, capsys, no_work):
    write_fashion_root(tmp_path)
    victim = tmp_path / "t10k-labels-idx1-ubyte.gz"
    base = ["--arch", "resnet8", "--width", "4", "--dataset", "fashion-mnist", "--data-root",
            str(tmp_path), "--no-progress"]
    expect_one_line_error([*base, "--out", str(victim), "--overwrite"], capsys, tmp_path,
                          f"--out {victim}", "dataset file")
    expect_one_line_error([*base, "--out", str(tmp_path / "x.pt"), "--log", str(victim),
                           "--overwrite"], capsys, tmp_path, f"--log {victim}", "dataset file")


def test_truncated_dataset_file_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_fashion_root(data, n_train=64)
    victim = data / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-30])
    expect_one_line_error(["--arch", "resnet8", "--width", "4", "--dataset", "fashion-mnist",
                           "--data-root", str(data), "--batch-size", "16", "--no-progress",
                           "--out", str(tmp_path / "x.pt")], capsys, tmp_path,
                          str(victim), "truncated")


def test_checkpoint_folder_given_to_resume_is_named_a_directory(tmp_path, capsys, no_work):
    (tmp_path / "x.pt").mkdir()
    expect_one_line_error([*TINY, "--out", str(tmp_path / "x.pt"), "--resume"], capsys,
                          tmp_path, "is a directory")


def test_failed_save_names_the_path(tmp_path, capsys, monkeypatch):
    """A failure at the first save (here: a full disk) is one line naming the checkpoint."""
    real_save = torch.save

    def save_to_a_full_disk(obj, f):
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    out = tmp_path / "x.pt"
    code, err = run_main([*TINY, "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert str(out) in err and "No space left on device" in err
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".jsonl"]


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(loop, "load_data", bug)
    with pytest.raises(KeyError, match="a bug"):
        main([*TINY, "--out", str(tmp_path / "x.pt")])


def test_valid_resume_still_works_after_the_checks(tmp_path, capsys):
    """--resume of this run's own checkpoint (and its log) passes every output check."""
    out = tmp_path / "x.pt"
    main([*TINY, "--out", str(out)])
    main([*TINY, "--out", str(out), "--resume"])
    assert "already completed 1 epochs" in capsys.readouterr().out
