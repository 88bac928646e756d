"""environment.yml and pyproject.toml must list the same dependencies, and torch must be a
release fixed for the weights_only bypasses, in both and at import."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from training import versions

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_lists_the_pyproject_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {_name(r): r.replace(" ", "") for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {}
    for entry in env["dependencies"]:
        for req in entry["pip"] if isinstance(entry, dict) else [entry]:
            if not req.startswith("-e"):
                listed[_name(req)] = req.replace(" ", "")
    listed.pop("python"), listed.pop("pip")
    assert listed == wanted


def _floor(requirement: str) -> str:
    """The version after ``>=`` in a requirement such as ``torch>=2.10,<2.15``."""
    return re.search(r">=\s*([\w.]+)", requirement).group(1)


def test_torch_floor_is_the_first_release_fixed_for_the_weights_only_bypass():
    """torch.load(weights_only=True) is bypassable before 2.6 (CVE-2025-32434) and before 2.10
    (CVE-2026-24747): pyproject, environment.yml and the import-time check agree on 2.10."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floors = {_name(r): _floor(r) for r in pyproject["project"]["dependencies"]
              if _name(r) in ("torch", "torchvision")}
    assert floors == {"torch": "2.10", "torchvision": "0.25"}
    assert (versions.TORCH_FLOOR, versions.TORCHVISION_FLOOR) == (floors["torch"],
                                                             floors["torchvision"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    assert {_name(r): _floor(r) for r in pip if _name(r) in floors} == floors


def test_the_installed_torch_meets_the_floor():
    versions.check_torch(torch.__version__)   # what `import training` runs


@pytest.mark.parametrize("old", ["2.4.0", "2.9.1+cu128", "2.10.0a0+git1234", "1.13.1"])
def test_a_too_old_torch_is_refused_at_import(old):
    with pytest.raises(ImportError, match=rf"torch {re.escape(old)} .*CVE-2026-24747.*"
                       r"pip install 'torch>=2\.10'"):
        versions.check_torch(old)


@pytest.mark.parametrize("new", ["2.10.0", "2.10.1+cpu", "2.14.1+cu130"])
def test_fixed_torch_releases_pass(new):
    versions.check_torch(new)


def test_importing_training_under_an_old_torch_fails_with_the_fix():
    """The check runs when ``training`` is imported (a fresh interpreter, torch faked old)."""
    code = ("import torch; torch.__version__ = '2.9.1'\n"
            "try:\n    import training\nexcept ImportError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith("refused: torch 2.9.1") and "CVE-2026-24747" in out.stdout
