"""Linear probes: how linearly separable each layer's representation is (Alain & Bengio 2016).

:func:`probe_layers` probes every layer of a train and a test activation source
(:mod:`repsim.sources`) with :class:`LinearProbe` and returns a :class:`ProbeTable`
(``.to_frame()`` for pandas). The package, by what each module holds:

* :mod:`repsim.probe.estimator`: the protocol (standardise on train, L2 multinomial logistic
  regression, C by stratified CV on train, refit), :class:`ProbeSettings`,
  :class:`LinearProbe` (a scikit-learn classifier) and its two solver paths;
* :mod:`repsim.probe.layers`: :func:`probe_layers` (whole, streamed or projected layers,
  the train/test checks, chance level), :class:`ProbeRow`, :class:`ProbeTable`;
* :mod:`repsim.probe.memory`: the memory rule of a streamed fit (:func:`probe_memory`) and the
  row blocks that fit a budget (:func:`probe_block_rows`, :func:`projection_block_rows`);
* :mod:`repsim.probe.features`: :class:`ProbeError`, :class:`StreamedFeatures` (a layer read
  from a source in row blocks) and the standardisation.

>>> table = probe_layers(train_file, test_file, reduction="gap")     # doctest: +SKIP
>>> table.to_frame()[["layer", "test_acc", "chance"]]                 # doctest: +SKIP
"""

from repsim.measures.pairing import ProvenanceWarning
from repsim.probe.estimator import DEFAULT_CS, LinearProbe, ProbeSettings
from repsim.probe.features import ProbeError, StreamedFeatures
from repsim.probe.layers import GAP, ProbeRow, ProbeTable, probe_layers
from repsim.probe.memory import probe_block_rows, probe_memory, projection_block_rows
from repsim.sources import ActivationSet

__all__ = [
    "DEFAULT_CS",
    "GAP",
    "ActivationSet",
    "LinearProbe",
    "ProbeError",
    "ProbeRow",
    "ProbeSettings",
    "ProbeTable",
    "ProvenanceWarning",
    "StreamedFeatures",
    "probe_block_rows",
    "probe_layers",
    "probe_memory",
    "projection_block_rows",
]
