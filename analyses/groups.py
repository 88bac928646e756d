"""Seed groups on the command line: several networks trained the same way but for their seed.

``NAME=FILE,FILE,...`` is a group of checkpoints (or activation files) named NAME, e.g.
``auglocal=al_s0.pt,al_s1.pt``; a plain ``FILE`` is a group of one, named after its model
("auglocal (al.pt)") as before groups existed. ``analyses.cka --b``, ``analyses.probe --ckpt``
and ``analyses.report --ckpt`` take these; a settings field keeps each entry's canonical text
(so ``args.json`` records it as written) and :func:`parse_groups` turns the entries into
:class:`SeedGroup` objects.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from analyses.activations import model_label
from repsim.stats.intervals import check_level
from repsim.store import ActivationFile

SYNTAX = "write FILE, or NAME=FILE,FILE,... for the seeds of one method"


@dataclass(frozen=True)
class SeedGroup:
    """The networks of one method: ``files`` (one per seed) and ``name`` (None: a single
    file, named after its model)."""

    name: str | None
    files: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SeedGroup:
        """``FILE`` or ``NAME=FILE,FILE,...``; a bad entry raises ValueError naming the fix."""
        name, equals, rest = text.partition("=")
        if not equals:
            if not text.strip():
                raise ValueError(f"an empty file name; {SYNTAX}")
            return cls(None, (text,))
        files = tuple(rest.split(","))
        if not name.strip() or not all(f.strip() for f in files):
            raise ValueError(f"{text!r} has an empty name or file name; {SYNTAX}, with no "
                             "spaces around '=' and ','")
        repeated = sorted({f for f in files if files.count(f) > 1})
        if repeated:
            raise ValueError(f"{text!r} lists {repeated} more than once; each seed is a "
                             "separate network: list each file once")
        return cls(name, files)

    def __str__(self) -> str:
        return self.files[0] if self.name is None else f"{self.name}={','.join(self.files)}"

    def label(self, first: ActivationFile) -> str:
        """The group's name, or the model label of its only network (``first``, opened)."""
        return self.name if self.name is not None else model_label(first)


class GroupedSettings:
    """Base of a command's Settings whose ``ckpt`` holds checkpoints or seed groups
    (``NAME=FILE,FILE,...``) and whose ``level`` is the level of its intervals: both checked
    when the settings are made."""

    def __post_init__(self):
        self.groups()
        check_level(self.level)

    def groups(self) -> tuple[SeedGroup, ...]:
        """The parsed ``ckpt`` entries."""
        return parse_groups(self.ckpt, "--ckpt")


def group_option(text: str) -> str:
    """argparse type of a seed-group entry: its canonical text, or a usage error."""
    try:
        return str(SeedGroup.parse(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_groups(entries: Sequence[str], option: str) -> tuple[SeedGroup, ...]:
    """The groups of ``option``'s ``entries``, whose names must differ."""
    if isinstance(entries, str) or not entries:
        raise ValueError(f"{option} needs a non-empty list of entries, got {entries!r}; "
                         f"{SYNTAX}")
    groups = tuple(SeedGroup.parse(entry) for entry in entries)
    names = [g.name for g in groups if g.name is not None]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{option} names the group(s) {repeated} more than once; give each "
                         "group one NAME=FILE,FILE,... entry")
    return groups


def count(k: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{k} {noun}{'s' * (k != 1)}"


def seeded(groups: Sequence[SeedGroup]) -> bool:
    """Whether some group has several networks."""
    return any(len(g.files) > 1 for g in groups)


def check_each_network_once(files: Sequence[str]) -> None:
    """A seed-group comparison treats every file as its own network: refuse one given twice
    (it would count as two seeds that agree perfectly)."""
    repeated = sorted({f for f in files if list(files).count(f) > 1})
    if repeated:
        raise ValueError(f"{repeated} given more than once: in a seed-group comparison every "
                         "file is one trained network; list each file in one place only")
