"""``python -m training.train`` for torchrun, except that rank 0 'dies' (exit status 3) right
after writing its first checkpoint: tests/test_distributed.py resumes from what it leaves."""

import os
import sys

import training.train as loop

_save = loop.atomic_torch_save


def _save_then_die(obj, path):
    _save(obj, path)
    sys.stdout.flush()
    os._exit(3)


loop.atomic_torch_save = _save_then_die
loop.main(sys.argv[1:])
