"""Where the commands read and write, under one rule checked before any work is done.

* An output never replaces an input: ``--out`` (or ``--cache``) that is, after resolving links,
  one of the input files or folders is refused; so is an output folder that holds an input
  (its outputs would mix with it, and ``--overwrite`` would delete it), and an existing file
  inside an input folder (``--data-root``), which may be one of the inputs.
* An existing output is replaced only with ``--overwrite``, and never a read-only one. A folder
  output may exist empty; one that holds exactly the files an earlier run listed in its
  :data:`MANIFEST` is replaced as a whole with ``--overwrite``; one that holds any other file
  (the user's own, a checkpoint) is never replaced.
* Every folder written in must be writable: checked up front by creating and deleting a file
  in it (or in its nearest existing parent, where it does not exist yet).

A folder command writes one run into a fresh temporary folder beside ``--out`` and moves it into
place at the end (:func:`run_folder`), so the folder always holds exactly one run, and a run that
fails leaves neither a half-written folder nor the folders it created.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from training.checks import OutputError, check_writable, read_only

MANIFEST = ".run-files"  # in a run's folder: the files the run wrote (JSON list)
SOURCE_HINT = "pass a checkpoint written by training.train or an activation file (.h5)"


def check_input_file(path: str | Path, hint: str) -> Path:
    """``path`` as a Path, refused unless it is an existing file; ``hint`` says what to pass."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file: {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {hint}")
    return path


def check_output(out: str | Path, *, folder: bool, overwrite: bool,
                 inputs: Mapping[str, Iterable[str | Path | None]],
                 cache: str | Path | None = None) -> Path:
    """Refuse, before any work, an ``--out`` (a file, or a ``folder``) and a ``--cache`` folder
    that break the rule of this module. ``inputs``: {option: paths it names (None: unset)},
    files and folders the command reads. Returns ``out`` as a Path."""
    named = [(option, Path(p)) for option, paths in inputs.items() for p in paths
             if p is not None]
    out, cache = Path(out), None if cache is None else Path(cache)
    written = [] if cache is None else [("--cache", cache)]  # by this command, beside --out
    _check_not_input(f"--out {out}", out, named + written, holds=folder, inside=not folder)
    if out.exists() or out.is_symlink():
        (_check_replaceable_folder if folder else _check_replaceable_file)(out, overwrite)
    check_writable(out.parent, f"--out {out}")
    if cache is not None:
        _check_not_input(f"--cache {cache}", cache, named, holds=False, inside=False)
        if cache.exists() and not cache.is_dir():
            raise OutputError(f"--cache {cache} is a file; the cache is a folder: choose "
                              "another --cache")
        check_writable(cache, f"--cache {cache}")
    return out


def _check_not_input(what: str, out: Path, named: list[tuple[str, Path]], *, holds: bool,
                     inside: bool) -> None:
    """``what`` (an option and its path ``out``) must not be one of the ``named`` inputs
    [(option, path)], nor, if ``holds``, a folder holding one, nor, if ``inside``, an
    existing path inside an input folder."""
    resolved = out.resolve()
    for option, path in named:
        if path.resolve() == resolved or _same_file(path, out):
            raise OutputError(f"{what} is also {option} {path}: an output never replaces an "
                              "input; choose another path")
        if holds and path.resolve().is_relative_to(resolved):
            raise OutputError(f"{what} holds {option} {path}: the outputs would mix with an "
                              "input (and --overwrite would delete it); choose a folder "
                              "that holds no input")
        if inside and out.exists() and resolved.is_relative_to(path.resolve()):
            raise OutputError(f"{what} exists inside {option} {path}, an input folder: a "
                              "file there is never replaced; choose a path outside it")


def _same_file(a: Path, b: Path) -> bool:
    """Two names of one file (hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_replaceable_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name the file to write, e.g. "
                          f"{out / 'acts.h5'}")
    if not overwrite:
        raise OutputError(f"--out {out} exists; pass --overwrite to replace it, or choose "
                          "another --out")
    if read_only(out):
        raise OutputError(f"--out {out} is read-only; make it writable (chmod u+w) to replace "
                          "it, or choose another --out")


def _check_replaceable_folder(out: Path, overwrite: bool) -> None:
    if out.is_symlink():
        raise OutputError(f"--out {out} is a symbolic link; pass the folder it points to "
                          f"({out.resolve()}) or a new folder")
    if not out.is_dir():
        raise OutputError(f"--out {out} is a file, but --out names a folder here; choose a "
                          "folder")
    if not any(out.iterdir()):
        return  # an empty folder: the run's folder takes its place
    listed = _listed_files(out)
    if listed is None:
        raise OutputError(f"--out {out} holds files that are not the outputs of an analysis "
                          f"run (it has no {MANIFEST}, the list a run writes beside its "
                          "args.json), which are never replaced; choose a new or empty folder")
    extra = sorted(_files(out) - listed - {MANIFEST})
    if extra:
        more = ", …" if len(extra) > 3 else ""
        raise OutputError(f"--out {out} holds files its earlier run did not write "
                          f"({', '.join(extra[:3])}{more}), which are never replaced; move "
                          "them elsewhere or choose another --out")
    if not overwrite:
        raise OutputError(f"--out {out} holds the outputs of an earlier run; pass --overwrite "
                          "to replace them, or choose another --out")
    check_writable(out, f"--out {out}")


@contextlib.contextmanager
def new_folders(folder: Path) -> Iterator[Path]:
    """``folder``, created with its missing parents; those it created are removed again when
    the block raises (if they are empty by then)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


@contextlib.contextmanager
def run_folder(out: str | Path, *, overwrite: bool, sources: Mapping[str, Sequence[str]],
               data_root: str | None, cache: str, into: Path | None = None) -> Iterator[Path]:
    """The folder a command writes one run's outputs in, moved to ``out`` when the block
    succeeds; the paths are checked first, before any work.

    ``sources``: {option: input files}, each refused unless it exists (:data:`SOURCE_HINT`);
    ``out`` and ``cache`` must pass :func:`check_output` against them and ``data_root``.
    The run goes to a fresh hidden folder beside ``out``, which on success replaces ``out``
    (an empty folder, or an earlier run's that ``overwrite`` allows) and on failure is
    removed with any parents created for it, leaving ``out`` as it was. With ``into`` (a
    caller's own run folder, as the report gives its CKA and probe runs, checked by that
    caller) the outputs go straight there.
    """
    if into is not None:
        into.mkdir()
        yield into
        return
    for paths in sources.values():
        for path in paths:
            check_input_file(path, SOURCE_HINT)
    out = check_output(out, folder=True, overwrite=overwrite, cache=cache,
                       inputs={**sources, "--data-root": [data_root]}).resolve()
    with new_folders(out.parent):
        staging = _beside(out, "tmp")
        staging.mkdir()
        try:
            yield staging
            _list_files(staging)
            _replace_folder(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _files(folder: Path) -> set[str]:
    """The files below ``folder``, as paths relative to it ('cka/a__vs__b.png')."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _list_files(folder: Path) -> None:
    """Write :data:`MANIFEST`: the files of a finished run, so that ``--overwrite`` later
    replaces a folder only when it holds nothing else."""
    (folder / MANIFEST).write_text(json.dumps(sorted(_files(folder))))


def _listed_files(folder: Path) -> set[str] | None:
    """The files a run's :data:`MANIFEST` lists, or None without a readable one."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return set(listed) if isinstance(listed, list) else None


def _beside(path: Path, kind: str) -> Path:
    """A new hidden name in ``path``'s folder, e.g. ``.out.1a2b3c4d5e6f.tmp``."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}"


def _replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing non-empty ``out`` is moved aside first, then
    deleted (restored when the move fails)."""
    if not out.exists() or not any(out.iterdir()):
        new.replace(out)
        return
    old = _beside(out, "old")
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold, across processes, the lock of ``path``: an ``fcntl.flock`` on the file
    ``.<name>.lock`` beside it, which is removed on release."""
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # removed by its holder meanwhile
            held = False
        except BaseException:
            os.close(fd)
            raise
        if held:
            break
        os.close(fd)  # a lock file its holder removed: lock the current one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while held: a waiter on this file then takes a new one
        os.close(fd)
