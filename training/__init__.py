"""Training side of the toolkit: models, datasets, the training loop and checkpoints."""

import training.versions  # noqa: F401  first: refuses a torch older than the fixed floor
from training.checkpoint import CheckpointError, checkpoint_meta, load_checkpoint
from training.data import DatasetError, load_split
from training.models import build_model

__all__ = ["CheckpointError", "DatasetError", "build_model", "checkpoint_meta",
           "load_checkpoint", "load_split"]
