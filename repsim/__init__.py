"""repsim: layer-wise representation similarity (CKA) and separability of any ``nn.Module``."""

__version__ = "0.1.0"
