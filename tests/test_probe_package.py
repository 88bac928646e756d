"""The layout of repsim.probe: its public names, where they live, and imports in any order."""

import importlib
import subprocess
import sys

import pytest

import repsim.probe
import repsim.sources

PUBLIC = ["ActivationSet", "LinearProbe", "ProbeError", "ProbeRow", "ProbeSettings", "ProbeTable",
          "StreamedFeatures", "probe_block_rows", "probe_layers", "probe_memory",
          "projection_block_rows"]


@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_names_import_from_the_package(name):
    assert name in repsim.probe.__all__
    assert getattr(repsim.probe, name) is not None


def test_the_names_live_where_the_docs_say():
    from repsim.probe import estimator, features, layers, memory

    assert repsim.probe.ActivationSet is repsim.sources.ActivationSet
    assert repsim.probe.ProbeError is features.ProbeError and issubclass(features.ProbeError,
                                                                          ValueError)
    assert repsim.probe.StreamedFeatures is features.StreamedFeatures
    assert repsim.probe.LinearProbe is estimator.LinearProbe
    assert repsim.probe.probe_layers is layers.probe_layers
    assert repsim.probe.probe_memory is memory.probe_memory


def test_the_streaming_module_is_gone():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("repsim.streaming")


def test_projection_imports_first_without_a_cycle():
    """repsim.projection imports repsim.probe.features, whose package imports projection back
    (as a module, used at call time): a fresh interpreter importing projection first must end
    with both whole. (Importing the package or any of its modules first loads the package's
    __init__ first, the order every other test here runs in.)"""
    code = ("import repsim.projection\n"
            "import repsim.probe\n"
            "assert callable(repsim.projection.project)\n"
            "assert callable(repsim.probe.probe_layers)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
