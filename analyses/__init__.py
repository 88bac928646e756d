"""Command-line analyses: ``python -m analyses.extract``, ``analyses.cka``, ``analyses.probe``."""
