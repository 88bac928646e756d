"""repsim: layer-wise representation similarity (CKA and other measures) and separability of
any ``nn.Module``.

``repsim.similarity_matrix(a, b, measure="linear_cka")`` compares every layer of two
activation sources (:mod:`repsim.sources`) with a registered measure (:mod:`repsim.measures`).
"""

__version__ = "0.1.0"

from repsim.measures import similarity_matrix  # noqa: E402

__all__ = ["similarity_matrix"]
