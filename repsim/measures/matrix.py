"""``similarity_matrix``: any registered measure between every layer of two networks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from repsim.measures.base import Comparison, Measure, get_measure
from repsim.measures.pairing import Pairing, pair_sources
from repsim.measures.result import SimilarityResult

__all__ = ["similarity_matrix"]


def similarity_matrix(a: Any, b: Any, measure: str | Measure = "linear_cka", *,
                      reduction: str | None = None, layers_a: Sequence[str] | None = None,
                      layers_b: Sequence[str] | None = None, device: str | torch.device = "cpu",
                      progress: bool = False, level: float | None = None, n_perm: int = 0,
                      seed: int = 0, **params: Any) -> SimilarityResult:
    """``measure`` (a registered name, see :data:`repsim.measures.MEASURES`, or a
    :class:`Measure`) between every layer of ``a`` and every layer of ``b``.

    ``a``, ``b``: activation sources (:class:`repsim.store.ActivationFile`,
    :class:`repsim.sources.ActivationSet`) or dicts name → (n, p) array; sources are read at
    ``reduction`` (default "flatten"). ``params`` configure the measure (e.g.
    ``debiased=True``). Each layer is read once and prepared once (e.g. its Gram matrix);
    every pair is formed from the prepared sides. ``progress=True`` shows a bar over layers.

    Uncertainty (:mod:`repsim.stats`), from the prepared sides without reading a layer again:
    ``level`` (e.g. 0.95) adds ``low``/``high``, the delete-one jackknife interval over inputs;
    ``n_perm`` > 0 adds the baseline of b's inputs shuffled ``n_perm`` times (drawn with
    ``seed``): ``baseline_mean``, ``baseline_high``, ``calibrated``, ``p`` and ``p_adjusted``.
    """
    chosen = get_measure(measure, **params)
    return compute(chosen, pair_sources(a, b, reduction=reduction, layers_a=layers_a,
                                        layers_b=layers_b), device=device, progress=progress,
                   level=level, n_perm=n_perm, seed=seed)


def compute(measure: Measure, pairing: Pairing, *, device: str | torch.device = "cpu",
            progress: bool = False, level: float | None = None, n_perm: int = 0,
            seed: int = 0) -> SimilarityResult:
    """``measure`` over a checked :class:`Pairing`; see :func:`similarity_matrix`."""
    from repsim.stats.maps import check_uncertainty, map_uncertainty  # stats build on measures

    check_uncertainty(level, n_perm)
    device = torch.device(device)
    widths_a, widths_b = pairing.widths()
    labels = pairing.a.source.labels if "labels" in measure.needs else None
    if "labels" in measure.needs and labels is None:
        raise ValueError(f"measure {measure.name!r} needs the rows' labels, but source a has "
                         "none; pass labels= to ActivationSet or use an activation file")
    comparison = Comparison(n=pairing.n, widths_a=widths_a, widths_b=widths_b, labels=labels,
                            device=device)
    measure.check(comparison)
    with tqdm(total=len(widths_a) + len(widths_b), desc=f"{measure.label} layers",
              disable=not progress) as bar:
        sides = [measure.prepare(side.read_all(names, device, bar.update),
                                 [f"layer {m!r} of {side.role}" for m in names], comparison)
                 for side, names in ((pairing.a, pairing.layers_a),
                                     (pairing.b, pairing.layers_b))]
    values = measure.compare(*sides, comparison)
    matrix = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    matrix = np.asarray(matrix, dtype=np.float64)
    return result_of(measure, pairing, matrix, measure.settings(),
                     **map_uncertainty(measure, *sides, comparison, matrix, level=level,
                                       n_perm=n_perm, seed=seed))


def result_of(measure: Measure, pairing: Pairing, matrix: np.ndarray,
              settings: dict[str, Any], **uncertainty: Any) -> SimilarityResult:
    """The result record of ``matrix`` (La, Lb) computed by ``measure`` over ``pairing``, with
    the uncertainty fields of :func:`repsim.stats.map_uncertainty`."""
    return SimilarityResult(
        matrix=matrix, layers_a=pairing.layers_a, layers_b=pairing.layers_b, n=pairing.n,
        measure=measure.name, label=measure.label, direction=measure.direction,
        value_range=measure.value_range, identical=measure.identical,
        description=measure.description, settings=settings, reduction=pairing.reduction,
        provenance_a=pairing.a.source.meta, provenance_b=pairing.b.source.meta, **uncertainty)
