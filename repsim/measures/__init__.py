"""Similarity measures between the layers of two networks, one module per family, all on one
registry (:mod:`repsim.measures.base`); :func:`similarity_matrix` runs any of them.

Registered here: ``linear_cka``, ``rbf_cka`` (:mod:`repsim.measures.cka`).
"""

from repsim.measures import cka  # noqa: F401  (registers the CKA measures)
from repsim.measures.base import MEASURES, Comparison, Measure, PairwiseMeasure, get_measure, register
from repsim.measures.matrix import similarity_matrix
from repsim.measures.pairing import ProvenanceWarning
from repsim.measures.result import SimilarityResult

__all__ = ["MEASURES", "Comparison", "Measure", "PairwiseMeasure", "ProvenanceWarning",
           "SimilarityResult", "get_measure", "register", "similarity_matrix"]
