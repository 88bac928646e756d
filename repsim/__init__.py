"""repsim: layer-wise representation similarity (CKA and other measures) and separability of
any ``nn.Module``.

``repsim.similarity_matrix(a, b, measure="linear_cka")`` compares every layer of two
activation sources (:mod:`repsim.sources`) with a registered measure (:mod:`repsim.measures`).
It is imported on first use, so that reading activation files (:mod:`repsim.store`) does not
load PyTorch. ``repsim.layer_geometry`` (:mod:`repsim.geometry`: effective dimensionality and
class separation per layer) and ``repsim.reconstruct_layers`` (:mod:`repsim.decoder`: how well
a small decoder reconstructs the input from each layer) are imported on first use too.
"""

__version__ = "0.1.0"

__all__ = ["layer_geometry", "reconstruct_layers", "similarity_matrix"]


def __getattr__(name: str):
    if name == "similarity_matrix":
        from repsim.measures import similarity_matrix
        return similarity_matrix
    if name == "layer_geometry":
        from repsim.geometry import layer_geometry
        return layer_geometry
    if name == "reconstruct_layers":
        from repsim.decoder import reconstruct_layers
        return reconstruct_layers
    raise AttributeError(f"module 'repsim' has no attribute {name!r}")
