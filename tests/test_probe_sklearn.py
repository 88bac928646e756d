"""LinearProbe against scikit-learn's estimator contract (``parametrize_with_checks``), and the
input conventions that contract asks for, in the probe's own words."""

import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from repsim.probe import LinearProbe, ProbeError

# Checks LinearProbe does not meet, check name → why. Every check of scikit-learn 1.9 passes
# today, so this is empty; a check that cannot be met goes here with its reason, and one
# listed here that starts to pass fails the suite (strict xfail), so the list stays true.
# (check_array_api_input skips itself unless SCIPY_ARRAY_API=1 is set.)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS


# The default solver setting ("auto" with torch_threshold 0) fits with torch; "sklearn" is the
# other solver path. Both at the default Cs, cv and max_iter: the checks' data sets are small.
@parametrize_with_checks([LinearProbe(), LinearProbe(solver="sklearn")],
                         expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_linear_probe_meets_the_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------
# The conventions, with the probe's messages
# ---------------------------------------------------------------------------------------------


def blobs(seed=0, n_per_class=30, dim=4):
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.random.default_rng(9).standard_normal((3, dim))
    y = np.repeat(np.arange(3), n_per_class)
    return centres[y] + rng.standard_normal((len(y), dim)), y


def test_n_features_in_is_the_train_width_and_other_widths_are_refused():
    x, y = blobs()
    probe = LinearProbe(Cs=(1.0,)).fit(x, y)
    assert probe.n_features_in_ == 4
    with pytest.raises(ProbeError, match="X has 3 features, but LinearProbe is expecting 4 "
                                         "features as input"):
        probe.score(x[:, :3], y)


@pytest.mark.parametrize("method", ["predict", "decision_function", "score"])
def test_an_unfitted_probe_says_so(method):
    x, y = blobs()
    args = (x, y) if method == "score" else (x,)
    with pytest.raises(NotFittedError, match="This LinearProbe instance is not fitted yet"):
        getattr(LinearProbe(), method)(*args)


def test_object_arrays_of_numbers_fit_like_float_arrays():
    x, y = blobs()
    as_float = LinearProbe(Cs=(0.1, 1.0)).fit(x, y)
    as_object = LinearProbe(Cs=(0.1, 1.0)).fit(x.astype(object), y)
    np.testing.assert_array_equal(as_object.coef_, as_float.coef_)
    np.testing.assert_array_equal(as_object.predict(x.astype(object)), as_float.predict(x))


@pytest.mark.parametrize("bad, error, match", [
    ({"foo": "bar"}, TypeError, "features of dtype object must hold numbers: float\\(\\) "
                                "argument must be a string or a real number"),
    ("seven", ProbeError, "features of dtype object must hold numbers: could not convert "
                          "string to float: 'seven'"),
])
def test_object_arrays_of_anything_else_are_refused(bad, error, match):
    x, y = blobs()
    x = x.astype(object)
    x[0, 0] = bad
    with pytest.raises(error, match=match):
        LinearProbe().fit(x, y)


@pytest.mark.parametrize("make_x, match", [
    (lambda x: sparse.csr_array(x), r"sparse features \(csr_array\) are not supported; pass a "
                                    r"dense array, e\.g\. X\.toarray\(\)"),
    (lambda x: x + 1j, "Complex data not supported: features of dtype complex128"),
    (lambda x: x[:, 0], r"got shape \(90,\)\. Reshape your data"),
])
def test_features_sklearn_refuses_are_refused(make_x, match):
    x, y = blobs()
    with pytest.raises(ProbeError, match=match):
        LinearProbe().fit(make_x(x), y)


@pytest.mark.parametrize("make_y, match", [
    (lambda y: None, "LinearProbe requires y to be passed, but the target y is None"),
    (lambda y: y + 0.25 * (y == 1), r"labels must be classes, got continuous values "
                                    r"\(e\.g\. 1\.25\)"),
    (lambda y: np.where(y == 2, np.inf, y), "labels contain 30 NaN or infinite values"),
    (lambda y: np.column_stack([y, y]), r"labels must have shape \(90,\)"),
])
def test_labels_that_are_not_classes_are_refused(make_y, match):
    x, y = blobs()
    with pytest.raises(ProbeError, match=match):
        LinearProbe().fit(x, make_y(y))


def test_a_column_vector_of_labels_is_raveled_with_a_warning():
    x, y = blobs()
    flat = LinearProbe(Cs=(1.0,)).fit(x, y)
    with pytest.warns(DataConversionWarning, match="A column-vector y was passed"):
        column = LinearProbe(Cs=(1.0,)).fit(x, y[:, None])
    np.testing.assert_array_equal(column.coef_, flat.coef_)


def test_the_probe_works_in_pipelines_and_model_selection():
    x, y = blobs(n_per_class=40)
    pipeline = make_pipeline(FunctionTransformer(np.tanh), LinearProbe(Cs=(0.1, 1.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the estimator contract
        scores = cross_val_score(pipeline, x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    assert clone(pipeline).get_params()["linearprobe__Cs"] == (0.1, 1.0)
