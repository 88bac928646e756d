"""Similarity measures between the layers of two networks, one module per family, all on one
registry (:mod:`repsim.measures.base`); :func:`similarity_matrix` runs any of them.

Registered here: ``linear_cka``, ``rbf_cka`` (:mod:`repsim.measures.cka`); ``cca_mean_rho``,
``cca_r2``, ``svcca``, ``pwcca`` (:mod:`repsim.measures.cca`); ``linear_regression_r2``
(:mod:`repsim.measures.regression`); ``procrustes``, ``shape_metric``
(:mod:`repsim.measures.shape`); ``rsa`` (:mod:`repsim.measures.rsa`); ``mutual_knn``,
``knn_jaccard`` (:mod:`repsim.measures.neighbours`).
"""

from repsim.measures import cka  # noqa: F401  (registers the CKA measures)
from repsim.measures import shape  # noqa: F401  (registers the shape metrics)
from repsim.measures import rsa  # noqa: F401  (registers RSA)
from repsim.measures import neighbours  # noqa: F401  (registers the k-NN measures)
from repsim.measures import cca  # noqa: F401  (registers the CCA family)
from repsim.measures import regression  # noqa: F401  (registers linear regression R²)
from repsim.measures.base import MEASURES, Comparison, Measure, PairwiseMeasure, get_measure, register
from repsim.measures.matrix import similarity_matrix
from repsim.measures.pairing import ProvenanceWarning
from repsim.measures.result import SimilarityResult

__all__ = ["MEASURES", "Comparison", "Measure", "PairwiseMeasure", "ProvenanceWarning",
           "SimilarityResult", "get_measure", "register", "similarity_matrix"]
