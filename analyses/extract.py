"""Extract a checkpoint's layer activations on a dataset split into one HDF5 file.

    python -m analyses.extract --ckpt bp.pt --split test --n 2000 --reduction flatten gap \\
        --out acts/bp__test.h5

The checkpoint's dataset is used; ``--n`` and ``--seed`` pick a class-balanced subset, the
same rows for every checkpoint. Layers default to the checkpoint's own list. An existing
``--out`` is replaced only with ``--overwrite``, and never the checkpoint (see
:mod:`analyses.paths`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analyses.activations import InputSelection, extract_checkpoint
from analyses.cli import SettingsParser, run_cli
from analyses.paths import check_input_file, check_output, new_folders


@dataclass(frozen=True, kw_only=True)
class Settings:
    ckpt: str                                        # checkpoint written by training.train
    out: str                                         # activation file to write (.h5)
    split: str = "test"                              # "train" or "test"
    n: int = 2000                                    # inputs (0: the whole split)
    seed: int = 0                                    # which inputs, when n is a subset
    reduction: tuple[str, ...] = ("flatten", "gap")  # flatten, gap, pool<k>: one or more
    layers: tuple[str, ...] | None = None            # module names (None: the checkpoint's)
    data_root: str | None = None                     # dataset folder
    batch_size: int = 250                            # inputs per forward pass
    device: str = "cpu"                              # torch device of the forward passes
    threads: int | None = None                       # torch CPU threads (None: torch's choice)
    overwrite: bool = False                          # replace an existing --out


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.extract", __doc__, Settings)
    p.add("ckpt", help="checkpoint written by training.train")
    p.add("out", help="activation file to write (.h5)")
    p.shared("split", "n", "seed", "reduction", "layers", "data_root", "batch_size", "device",
             "threads", "overwrite",
             reduction={"nargs": "+", "help": "flatten, gap, pool<k> (one or more; default: "
                                              "flatten gap)"},
             layers={"help": "module names (default: the checkpoint's)"},
             batch_size={"help": "inputs per forward pass (%(default)s)"})
    return p


def run(settings: Settings) -> Path:
    check_input_file(settings.ckpt, "pass a checkpoint written by training.train")
    out = check_output(settings.out, folder=False, overwrite=settings.overwrite,
                       inputs={"--ckpt": [settings.ckpt], "--data-root": [settings.data_root]})
    selection = InputSelection(settings.split, settings.n or None, settings.seed,
                               settings.data_root, settings.batch_size)
    with new_folders(out.parent):
        path = extract_checkpoint(settings.ckpt, out, selection, reductions=settings.reduction,
                                  layers=settings.layers, device=settings.device)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
