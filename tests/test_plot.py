"""The uncertainty drawn by repsim.plot: interval bands, the noise-ceiling band, marked layers,
and heatmap cells greyed out where a map is not above its permutation baseline."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from analyses.aux import Curve, depth_figure
from repsim import plot
from repsim.measures import SimilarityResult

LAYERS = ["net.stem", "net.s1b1", "net.s2b1"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _band_span(collection):
    """(min, max) of y over a fill_between band, per x (the band's low and high)."""
    vertices = collection.get_paths()[0].vertices
    return {x: (vertices[vertices[:, 0] == x, 1].min(), vertices[vertices[:, 0] == x, 1].max())
            for x in np.unique(vertices[:, 0])}


def test_layer_matched_plot_draws_bands_the_ceiling_and_stars():
    fig = plot.layer_matched_plot(
        {"x": [0.9, 0.8, 0.7], "y": [0.5, 0.4, 0.3]}, LAYERS, reference="r",
        bands={"x": ([0.85, 0.75, 0.6], [0.95, 0.85, 0.8])},
        ceiling=([0.95, 0.9, 0.85], [0.93, 0.88, 0.8], [0.97, 0.92, 0.9]),
        ceiling_label="ceiling", marked={"x": [False, True, False], "y": [True, False, True]},
        marked_label="significant")
    ax = fig.axes[0]
    ceiling, band = ax.collections  # drawn in this order
    assert _band_span(ceiling) == {0: (0.93, 0.97), 1: (0.88, 0.92), 2: (0.8, 0.9)}
    assert _band_span(band) == {0: (0.85, 0.95), 1: (0.75, 0.85), 2: (0.6, 0.8)}
    lines = {line.get_label(): line for line in ax.lines}
    assert np.allclose(band.get_facecolor()[0][:3], to_rgb(lines["x"].get_color()))
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [
        ([1], [0.8]), ([0, 2], [0.5, 0.3])]
    assert [s.get_color() for s in stars] == [lines["x"].get_color(), lines["y"].get_color()]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"ceiling", "x", "y",
                                                                   "significant"}


def test_layer_matched_plot_without_uncertainty_is_lines_only():
    ax = plot.layer_matched_plot({"x": [0.9, 0.8, 0.7]}, LAYERS, reference="r").axes[0]
    assert not ax.collections and len(ax.lines) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x"]


def test_probe_plot_bands_are_the_given_intervals_and_the_legend_says_what_they_are():
    ax = plot.probe_plot({"x": ([0, 0.5, 1], [0.5, 0.7, 0.9]), "y": ([0, 1], [0.4, 0.6])},
                         chance=0.1, reduction="gap", bands={"y": ([0.3, 0.5], [0.45, 0.7])},
                         band_label="bands: 95% interval").axes[0]
    (band,) = ax.collections
    assert _band_span(band) == {0: (0.3, 0.45), 1: (0.5, 0.7)}
    assert ax.get_legend().get_title().get_text() == "bands: 95% interval"


def _result(**uncertainty):
    return SimilarityResult(matrix=np.array([[0.9, 0.2], [0.3, 0.8]]), layers_a=("a1", "a2"),
                            layers_b=("b1", "b2"), n=50, measure="linear_cka",
                            label="linear CKA", direction="similarity", value_range=(0.0, 1.0),
                            identical=1.0, **uncertainty)


def _drawn(fig):
    """The (La, Lb) values of a heatmap's cells, masked where they are left grey."""
    mesh = fig.axes[0].collections[0]
    return np.ma.masked_array(mesh.get_array()).reshape(2, 2)


def test_heatmap_greys_cells_not_above_their_baseline_and_shows_the_calibrated_score():
    p_adjusted = np.array([[0.01, 0.3], [0.05, np.nan]])
    calibrated = np.array([[0.85, 0.1], [0.2, 0.7]])
    fig = plot.result_heatmap(_result(p_adjusted=p_adjusted, calibrated=calibrated),
                              name_a="A", name_b="B", title="t", calibrated=True, alpha=0.05)
    drawn = _drawn(fig)
    assert np.array_equal(np.ma.getmaskarray(drawn), [[False, True], [False, True]])
    assert np.allclose(drawn.compressed(), [0.85, 0.2])
    assert "calibrated linear CKA" in fig.axes[1].get_ylabel()  # the colour bar
    assert "grey: Holm p > 0.05" in fig.axes[0].get_title()
    plain = _drawn(plot.result_heatmap(_result(), name_a="A", name_b="B", title="t"))
    assert not np.ma.getmaskarray(plain).any() and np.allclose(plain, _result().matrix)


@pytest.mark.parametrize("option", [{"calibrated": True}, {"alpha": 0.05}])
def test_heatmap_options_need_the_permutation_baseline(option):
    with pytest.raises(ValueError, match=r"compute the map with n_perm > 0"):
        plot.result_heatmap(_result(), name_a="A", name_b="B", title="t", **option)


def line_colours(fig) -> dict[str, str]:
    """Legend label → colour (hex) of each labelled line of a figure."""
    return {line.get_label(): to_hex(line.get_color()) for ax in fig.axes
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_a_method_has_one_colour_in_every_figure():
    """The layer-matched, probe, depth-panel and aux figures draw each method in its colour
    of plot.METHOD_COLOURS, whatever other lines a figure holds and in whatever order."""
    layers = ["layers.stem", "layers.s1b1", "layers.s2b1"]
    x = [0.0, 0.5, 1.0]
    figures = [
        plot.layer_matched_plot({"auglocal": [0.9, 0.8, 0.7], "infopro": [0.8, 0.7, 0.6]},
                                layers, reference="bp"),
        plot.probe_plot({"bp (3 seeds)": (x, [0.5] * 3), "infopro": (x, [0.6] * 3),
                         "auglocal": (x, [0.7] * 3)}, chance=0.1, reduction="gap"),
        plot.depth_panels({"a": {"infopro": (x, [1, 2, 3]), "auglocal": (x, [3, 2, 1])}}),
        depth_figure([Curve("auglocal", x, [0.1, 0.2, 0.3], group="auglocal"),
                      Curve("infopro", x, [0.3, 0.2, 0.1], group="infopro")],
                     ylabel="y", title="t"),
    ]
    for fig in figures:
        colours = line_colours(fig)
        plt.close(fig)
        assert colours["auglocal"] == plot.METHOD_COLOURS["auglocal"]
        assert colours["infopro"] == plot.METHOD_COLOURS["infopro"]
    assert plot.colour_of("BP (3 seeds)") == plot.METHOD_COLOURS["bp"]
    assert plot.colour_of("bp_seed1") == plot.METHOD_COLOURS["bp"]
    assert len(set(plot.METHOD_COLOURS.values())) == len(plot.METHOD_COLOURS)
    other = plot.colour_of("my network")
    assert other == plot.colour_of("my network") and other not in plot.METHOD_COLOURS.values()
