"""repsim: layer-wise representation similarity (CKA and other measures) and separability of
any ``nn.Module``.

``repsim.similarity_matrix(a, b, measure="linear_cka")`` compares every layer of two
activation sources (:mod:`repsim.sources`) with a registered measure (:mod:`repsim.measures`).
It is imported on first use, so that reading activation files (:mod:`repsim.store`) does not
load PyTorch.
"""

__version__ = "0.1.0"

__all__ = ["similarity_matrix"]


def __getattr__(name: str):
    if name == "similarity_matrix":
        from repsim.measures import similarity_matrix
        return similarity_matrix
    raise AttributeError(f"module 'repsim' has no attribute {name!r}")
