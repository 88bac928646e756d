"""CKA, the first measure of :mod:`repsim.measures`: this module is its short import path
(``from repsim.cka import cka_matrix``); the implementation is :mod:`repsim.measures.cka`."""

from repsim.measures.cka import *  # noqa: F401,F403
from repsim.measures.cka import __all__  # noqa: F401
