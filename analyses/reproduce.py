"""Reproduce the AugLocal paper's representation findings in one command, with verdicts.

    python -m analyses.reproduce --preset cpu --out reproduce-out [--seeds N] [--threads 2]
    python -m analyses.reproduce --preset cpu --out reproduce-out --resume --publish docs
    python -m analyses.reproduce --preset gpu --out reproduce-gpu --device cuda

Trains, per architecture of the preset (:data:`PRESETS`), BP, AugLocal, DGL, InfoPro and
PredSim (K, d and τ of the paper: ResNet-32 K = 16, d = 2, τ = 0.5; ResNet-110 K = 55, d = 3),
``--seeds`` networks each, every network from its own seed and all on the same images (one
subset seed), through ``training.train`` with ``resume``: an interrupted run continues and a
finished one is reused. Then, with seed groups and BP as the reference, it runs
``analyses.cka`` (layer-matched CKA with the BP–BP noise ceiling, intervals over seeds, the
tests of each method against the ceiling and of each pair of methods, Holm over layers; the CKA
maps of the first seeds), the same comparison under Procrustes distance on gap features,
``analyses.probe``, ``analyses.geometry`` and ``analyses.information`` over the seed groups,
and ``analyses.aux`` and ``analyses.gradalign`` on the first seed of each method (per-network
analyses; their cost grows with every network) into ``OUT/analyses/<arch>/``, retrains one
short run twice to check that training is deterministic, and writes ``OUT/reproduction.md``
(:mod:`analyses.reproduction_doc`: one section per claim of the paper, each with a verdict
from the rules of :mod:`analyses.verdicts`, the numbers behind it and its figures) and
``OUT/reproduction.json`` (the verdicts and numbers). ``--publish DOCS`` copies the document to
``DOCS/reproduction.md`` and its figures to ``DOCS/reproduction/``.

Presets (:data:`PRESETS`): ``tiny``, the test: ResNet-8 width 4 (K = 4) on digits, 2 seeds,
1 epoch, the analyses on a few hundred inputs; ``cpu``: ResNet-32 width 16, K = 16, on 8,000
Fashion-MNIST images, 4 epochs, batch 128, lr 0.1, 6 seeds (sized below); ``gpu`` (with
``--device cuda``): ResNet-32 (K = 16, d = 2) and ResNet-110 (K = 55, d = 3) on all 60,000
images, the paper's schedule (400 epochs, batch 1024, lr 0.8, 10 warm-up epochs), 3 seeds.
Every preset trains with ``--amp auto``: bf16 autocast + channels-last where the CPU or GPU
has bf16 units (float32 elsewhere; the choice is printed and recorded in each checkpoint),
evaluates the epochs before the last on 2,000 test images in that precision and the last on
all 10,000 in float32 (the accuracy every table shows); the analyses extract float32
activations.

``--out`` is a new or empty folder, or one an earlier reproduction wrote (it holds
:data:`MARKER`): ``--resume`` continues it (same preset), ``--overwrite`` deletes it first. A
folder holding anything else is never used.

Sizing the cpu preset (6 seeds, so that the exact seed-label tests can reach p = 0.002 and
the primary endpoints' Welch tests have power: ``analyses.verdicts``). Training throughput of
ResNet-32 (width 16, K = 16) on Fashion-MNIST at batch 128 with bf16 + channels-last, 2
threads, interleaved (``benchmarks/step_time.py --dataset fashion-mnist --batch 128 --threads
1 2 --precisions fp32 bf16-cl``, on a CPU with AVX-512 BF16 and no AMX), in images per second:

    bp 629, auglocal 248, dgl 588, infopro 183, predsim 304   (float32: 311, 134, 306, 101, 207)

One training image through all five methods costs Σ 1/rate = 0.0161 s, so S images × E
epochs × 6 seeds cost 0.0964 · S · E s: S = 8,000 and E = 4 need 51 minutes, plus about 16 s
per run for start-up, the cost measurement and the evaluations (8 minutes for 30 runs), and
the analyses. A BP pilot (bf16, 2 seeds each) at equal cost found 8,000 images × 5 epochs and
4,000 × 10 alike: test accuracy 0.845 and 0.832–0.843, BP–BP layer-matched CKA 0.72–0.85 and
0.75–0.87 in the middle and deep layers, so the number of steps, not the split, sets the
ceiling; the ≥ 0.90 ceiling of 12 epochs does not fit 90 minutes with 6 seeds on 2 cores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from analyses import aux, cka, geometry, gradalign, information, probe, report
from analyses import report_sections
from analyses.activations import activations_of
from analyses.cli import SettingsParser, positive, run_cli, write_settings
from analyses.paths import run_folder
from analyses.reproduction_doc import document
from analyses.verdicts import LEVEL, METHODS, ArchResult, claims
from repsim.stats.groups import SeedGroups, seed_groups
from training.checkpoint import checkpoint_meta, read_checkpoint, run_precision
from training.checks import OutputError
from training.train import TrainConfig, train

MARKER = "reproduce.json"  # in --out: the preset and settings of the reproduction it holds
WRITTEN = {MARKER, "runs", "acts", "analyses", "determinism", "reproduction.md",
           "reproduction.json"}  # everything a reproduction writes in --out
STAGING = re.compile(r"\.analyses\.[0-9a-f]{12}\.(tmp|old)")  # left by a killed run_folder

# Per preset: the architectures with their (K, aux depth d, pyramid coefficient τ), seeds per
# method, the training settings every run shares (TrainConfig fields), the analyses' budgets
# and the short run trained twice for the determinism check.
PRESETS: dict[str, dict] = {
    "tiny": {  # the test: seconds
        "archs": {"resnet8": (4, 2, 0.5)}, "seeds": 2,
        "train": {"width": 4, "dataset": "digits", "subset": None, "epochs": 1,
                  "batch_size": 64, "lr": 0.05, "amp": "auto"},
        "cka_n": 100, "probe": {"n_train": 200, "n_test": 100},
        "aux": {"n_train": 200, "n_test": 100}, "gradalign": {"batches": 2, "batch_size": 32},
        "information": {"n_train": 100, "n_test": 50, "steps": 5, "n_show": 2},
        "determinism": {"subset": 256},
    },
    "cpu": {  # <= 90 minutes on 2 cores: see the sizing in the module docstring
        "archs": {"resnet32": (16, 2, 0.5)}, "seeds": 6,
        "train": {"width": 16, "dataset": "fashion-mnist", "subset": 8000, "epochs": 4,
                  "batch_size": 128, "lr": 0.1, "amp": "auto", "eval_images": 2000},
        "cka_n": 500, "probe": {"n_train": 3000, "n_test": 1000},
        "aux": {"n_train": 1000, "n_test": 500}, "gradalign": {"batches": 4, "batch_size": 64},
        "information": {"n_train": 500, "n_test": 300, "steps": 40},
        "determinism": {"subset": 1024},
    },
    "gpu": {  # the paper's schedule (400 epochs, batch 1024, lr 0.8, 10 warm-up epochs)
        "archs": {"resnet32": (16, 2, 0.5), "resnet110": (55, 3, 0.5)}, "seeds": 3,
        "train": {"width": 16, "dataset": "fashion-mnist", "subset": None, "epochs": 400,
                  "batch_size": 1024, "lr": 0.8, "warmup_epochs": 10, "amp": "auto",
                  "eval_images": 2000},
        "cka_n": 2000, "probe": {"n_train": 10000, "n_test": 2000},
        "aux": {"n_train": 2000, "n_test": 1000}, "gradalign": {"batches": 8, "batch_size": 64},
        "information": {"n_train": 1000, "n_test": 500, "steps": 100},
        "determinism": {"subset": 4096},
    },
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    preset: str                    # tiny | cpu | gpu (PRESETS)
    out: str                       # folder of the runs, analyses and reproduction.md
    seeds: int | None = None       # networks per method (None: the preset's; >= 2)
    data_root: str | None = None   # dataset folder
    device: str = "cpu"            # torch device of training and analyses
    threads: int | None = None     # torch CPU threads (None: torch's choice)
    resume: bool = False           # continue the reproduction in --out, reusing finished runs
    overwrite: bool = False        # delete the reproduction in --out and start again
    publish: str | None = None     # folder to copy reproduction.md and its figures into
    progress: bool = True          # training progress bars

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is not a preset; choose one of "
                             f"{', '.join(PRESETS)}")
        if self.seeds is not None and self.seeds < 2:
            raise ValueError(f"--seeds {self.seeds}: seed groups need at least 2 networks per "
                             "method (intervals over seeds, the BP noise ceiling); give 2 or "
                             "more (3 or more for the tests to reach p <= 0.05)")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: pick one")

    @property
    def n_seeds(self) -> int:
        return self.seeds or PRESETS[self.preset]["seeds"]


def parser() -> SettingsParser:
    """The command line: one option per field of :class:`Settings`, which it builds."""
    p = SettingsParser("python -m analyses.reproduce", __doc__.split("\n\n")[0], Settings)
    p.add("preset", choices=list(PRESETS), help="tiny (the test), cpu (<= 90 min on 2 cores) "
          "or gpu (ResNet-32 and ResNet-110, the paper's schedule; with --device cuda)")
    p.add("out", help="folder of the runs, analyses and reproduction.md")
    p.add("seeds", type=positive, help="networks per method (default: the preset's)")
    p.shared("data_root", "device", "threads")
    p.add("resume", action="store_true", help="continue the reproduction in --out")
    p.add("overwrite", action="store_true", help="delete the reproduction in --out first")
    p.add("publish", metavar="DOCS", help="copy reproduction.md to DOCS/ and its figures to "
          "DOCS/reproduction/ (e.g. docs)")
    p.parser.add_argument("--no-progress", dest="progress", action="store_false",
                          help="hide the training progress bars")
    return p


# ------------------------------------------------------------------ training


def run_name(arch: str, method: str, seed: int) -> str:
    return f"{arch}_{method}_s{seed}"


def run_configs(settings: Settings, out: Path) -> dict[str, dict[str, list[TrainConfig]]]:
    """{arch: {method: one TrainConfig per seed}}: every network its own seed (1000 × the
    method's index + s), the same training images (subset seed 0) for all."""
    preset = PRESETS[settings.preset]
    configs = {}
    for arch, (K, aux_depth, pyramid_coeff) in preset["archs"].items():
        configs[arch] = {
            method: [TrainConfig(
                method=method, K=None if method == "bp" else K, aux_depth=aux_depth,
                pyramid_coeff=pyramid_coeff, arch=arch, **preset["train"],
                data_root=settings.data_root, seed=1000 * i + s,
                out=str(out / "runs" / f"{run_name(arch, method, s)}.pt"), resume=True,
                device=settings.device, threads=settings.threads, progress=settings.progress)
                for s in range(settings.n_seeds)]
            for i, method in enumerate(METHODS)}
    return configs


def check_determinism(config: TrainConfig, folder: Path) -> dict:
    """Train ``config`` (AugLocal, a short run) twice and compare the two checkpoints' primary
    and aux weights and test accuracy exactly."""
    folder.mkdir(exist_ok=True)
    paths = []
    for name in ("first", "second"):
        path = folder / f"{name}.pt"
        train(replace(config, out=str(path), resume=False, overwrite=True))
        paths.append(path)
    a, b = (read_checkpoint(p) for p in paths)
    differ = [key for part in ("state_dict", "aux_state_dict")
              for key in a[part] if not torch.equal(a[part][key], b[part][key])]
    return {"identical": not differ and a["metrics"]["test_acc"] == b["metrics"]["test_acc"],
            "differing_tensors": differ, "tensors": len(a["state_dict"]) +
            len(a["aux_state_dict"]), "method": config.method, "arch": config.arch,
            "precision": run_precision(a),
            "subset": config.subset, "epochs": config.epochs, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------ the analyses


def checkpoint_rows(configs: Sequence[TrainConfig]) -> list[dict]:
    """Accuracy, training time, step memory and precision of each finished run (checkpoint
    metadata)."""
    rows = []
    for config in configs:
        meta = checkpoint_meta(config.out)
        metrics = meta["metrics"]
        rows.append({"file": Path(config.out).name, "seed": config.seed,
                     "precision": run_precision(meta),
                     "test_acc": metrics["test_acc"], "train_seconds": metrics["train_seconds"],
                     "step_mib": metrics["memory"]["total_peak_bytes"] / report.MIB,
                     "macs": metrics["macs_per_image"]})
    return rows


def analyse(arch: str, runs: Mapping[str, Sequence[TrainConfig]], settings: Settings,
            cache: Path, stage: Path, final: Path) -> ArchResult:
    """Every analysis of one architecture's seed groups into ``stage`` (which becomes
    ``final``)."""
    preset = PRESETS[settings.preset]
    files = {m: [c.out for c in configs] for m, configs in runs.items()}
    entries = tuple(f"{m}={','.join(f)}" for m, f in files.items())
    common = {"cache": str(cache), "data_root": settings.data_root, "device": settings.device}
    plain = {"data_root": settings.data_root, "device": settings.device}
    stage.mkdir()
    comparison = cka.run(cka.Settings(a=tuple(files["bp"]), b=entries[1:], n=preset["cka_n"],
                                      out=str(final / "cka"), **common), into=stage / "cka")
    robust = procrustes_groups(files, preset["cka_n"], common, stage / "procrustes")
    probes = probe.run(probe.Settings(ckpt=entries, out=str(final / "probe"), **preset["probe"],
                                      **common), into=stage / "probe")
    firsts = tuple(group[0] for group in files.values())  # aux and gradalign: per network
    aux_rows = aux.run(aux.Settings(ckpt=firsts, out=str(final / "aux"), **preset["aux"],
                                    **common), into=stage / "aux")
    alignments = gradalign.run(gradalign.Settings(ckpt=firsts, out=str(final / "gradalign"),
                                                  **preset["gradalign"], **plain),
                               into=stage / "gradalign")
    shapes = geometry.run(geometry.Settings(ckpt=entries, out=str(final / "geometry"),
                                            **preset["probe"], **common),
                          into=stage / "geometry")
    info = information.run(information.Settings(ckpt=entries, out=str(final / "information"),
                                                **preset["information"], **common),
                           into=stage / "information")
    tables = list(probes.tables.values())  # one per file, in the order of ``files``
    per_method, start = {}, 0
    for method, group in files.items():
        per_method[method] = np.array([[r.test_acc for r in t]
                                       for t in tables[start:start + len(group)]])
        start += len(group)
    curve = probes.curves["bp"]
    return ArchResult(
        arch=arch, rows={m: checkpoint_rows(c) for m, c in runs.items()}, cka=comparison.groups,
        procrustes=robust, probe_acc=per_method, rel_depth=np.array(curve.rel_depth),
        layers=tuple(curve.layers), stems=comparison.stems,
        sections={"probe": report.probe_table(probes),
                  "aux": report_sections.aux_section(aux_rows),
                  "gradalign": report_sections.gradalign_section(alignments),
                  "geometry": report_sections.geometry_section(shapes),
                  "information": report_sections.information_section(
                      info, Path(files["bp"][0]).stem)})


def procrustes_groups(files: Mapping[str, Sequence[str]], n: int, common: dict,
                      out: Path) -> SeedGroups:
    """The seed-group comparison of :mod:`analyses.cka` under Procrustes distance on gap
    features (the cached test inputs of the CKA), written like it into ``out``."""
    out.mkdir()
    with ExitStack() as opened:
        acts = {m: [opened.enter_context(activations_of(f, "test", n=n,
                                                        reductions=("flatten", "gap"),
                                                        **common)) for f in group]
                for m, group in files.items()}
        result = seed_groups(acts["bp"], {m: a for m, a in acts.items() if m != "bp"},
                             reference_name="bp", measure="procrustes", level=LEVEL,
                             reduction="gap", device=common["device"])
    cka.write_seed_groups(result, "Procrustes distance (gap)", out)
    return result


# ------------------------------------------------------------------ the command


def prepare_out(settings: Settings) -> Path:
    """``--out`` as a Path after the rule of the module docstring; writes :data:`MARKER`."""
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; --out names a folder: choose another")
    held = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if held:
        marker = out / MARKER
        if not marker.exists():
            raise OutputError(f"--out {out} holds files that are not a reproduction's "
                              f"({', '.join(held[:3])}{', …' if len(held) > 3 else ''}), which "
                              "are never used or replaced; choose a new or empty folder")
        other = sorted(name for name in set(held) - WRITTEN if not STAGING.fullmatch(name))
        if other:
            raise OutputError(f"--out {out} holds files a reproduction did not write "
                              f"({', '.join(other[:3])}); move them elsewhere or choose "
                              "another --out")
        earlier = json.loads(marker.read_text())["preset"]
        if settings.overwrite:
            for name in held:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif not settings.resume:
            raise OutputError(f"--out {out} holds an earlier reproduction (preset {earlier}); "
                              "pass --resume to continue it, reusing its finished runs, or "
                              "--overwrite to start again")
        elif earlier != settings.preset:
            raise OutputError(f"--out {out} holds a reproduction of preset {earlier}, not "
                              f"{settings.preset}; --resume continues the same preset: choose "
                              "another --out or pass --overwrite")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(asdict(settings), indent=1))
    return out


def sizing(preset: str) -> str | None:
    """How the preset was sized (the module docstring's paragraphs from "Sizing the <preset>
    preset"), None where the docstring has none."""
    marker = f"Sizing the {preset} preset"
    return __doc__[__doc__.index(marker):].strip() if marker in __doc__ else None


def commit() -> str:
    """The repository's HEAD (with a note when the tree has uncommitted changes), or
    'unknown' outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head[:12]}`" + (" with uncommitted changes" if dirty.strip() else "")


def publish(out: Path, text: str, docs: Path) -> Path:
    """``docs/reproduction.md`` and the figures it shows under ``docs/reproduction/``."""
    figures = sorted(set(re.findall(r"\]\(analyses/([^)]+\.png)\)", text)))
    target = docs / "reproduction"
    if target.exists():
        shutil.rmtree(target)
    for figure in figures:
        (target / figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "analyses" / figure, target / figure)
    path = docs / "reproduction.md"
    path.write_text(text.replace("](analyses/", "](reproduction/"))
    return path


def run(settings: Settings) -> Path:
    """Train (or reuse) every network, run the analyses, check determinism, write the
    document; its path."""
    start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = prepare_out(settings)
    configs = run_configs(settings, out)
    for per_method in configs.values():
        for config in (c for group in per_method.values() for c in group):
            train(config)
    first = next(iter(configs.values()))["auglocal"][0]
    determinism = check_determinism(
        replace(first, epochs=1, warmup_epochs=0, progress=False,
                **PRESETS[settings.preset]["determinism"]), out / "determinism")
    sources = [c.out for m in configs.values() for g in m.values() for c in g]
    with run_folder(out / "analyses", overwrite=True, sources={"--ckpt": sources},
                    data_root=settings.data_root, cache=str(out / "acts")) as stage:
        results = [analyse(arch, runs, settings, out / "acts", stage / arch,
                           out / "analyses" / arch) for arch, runs in configs.items()]
        write_settings(settings, stage)
    found = {r.arch: claims(r) for r in results}
    run_info = {"commit": commit(), "wall_seconds": time.perf_counter() - start,
                "threads": torch.get_num_threads(), "determinism": determinism,
                "sizing": sizing(settings.preset)}
    text = document(settings, PRESETS[settings.preset], results, found, run_info)
    (out / "reproduction.md").write_text(text)
    (out / "reproduction.json").write_text(json.dumps(
        {"preset": settings.preset, "seeds": settings.n_seeds, "claims": found,
         "run": run_info}, indent=1, default=float))
    print(f"\nwrote {out / 'reproduction.md'}")
    if settings.publish:
        print(f"published {publish(out, text, Path(settings.publish))}")
    for arch, claim in found.items():
        for name, numbers in claim.items():
            print(f"{arch} {name}: {numbers['verdict']}")
    return out / "reproduction.md"


def main(argv: list[str] | None = None) -> None:
    run_cli(parser, run, argv)


if __name__ == "__main__":
    main()
