"""Drift statistics: exact against scipy on small samples, flags at 100k rows, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_h
from scipy import stats as st
from scipy.spatial.distance import jensenshannon

from underlay.errors import InvalidInput
from underlay.monitoring import stats
from underlay.monitoring.drift import DriftOptions, FeatureOverride, compute_drift


def _numeric_pair(seed: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # rounded, so the samples hold ties within and across them
    return np.round(rng.normal(size=n), 1), np.round(rng.normal(0.3, 1.4, size=m), 1)


@pytest.mark.parametrize(("n", "m"), [(7, 7), (40, 65), (300, 120)])
def test_numeric_scores_match_scipy(n: int, m: int) -> None:
    ref, cur = _numeric_pair(n + m, n, m)
    report = compute_drift(
        {"w": ref, "k": ref},
        {"w": cur, "k": cur},
        DriftOptions(min_rows=1, overrides={"k": FeatureOverride(method="ks")}),
    )
    w, k = report.features
    assert w.method == "wasserstein"
    assert w.score == pytest.approx(st.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-12)
    ks = st.ks_2samp(ref, cur)
    assert k.score == pytest.approx(ks.statistic, abs=1e-12)
    en = n * m / (n + m)
    assert k.p_value == pytest.approx(st.kstwobign.sf(math.sqrt(en) * ks.statistic), rel=1e-9)


def test_ks_p_value_is_close_to_scipy_asymptotic() -> None:
    ref, cur = _numeric_pair(3, 2000, 1500)
    cur = cur[:1500] * 0.8
    report = compute_drift(
        {"x": ref},
        {"x": cur},
        DriftOptions(min_rows=1, overrides={"x": FeatureOverride(method="ks")}),
    )
    assert report.features[0].p_value == pytest.approx(
        st.ks_2samp(ref, cur, method="asymp").pvalue, abs=0.01
    )


def test_psi_uses_reference_deciles_and_epsilon() -> None:
    ref = np.arange(1000, dtype=float)
    cur = np.concatenate([np.full(500, 50.0), np.full(500, 2000.0)])
    report = compute_drift(
        {"x": ref},
        {"x": cur},
        DriftOptions(min_rows=1, overrides={"x": FeatureOverride(method="psi")}),
    )
    p = np.full(10, 0.1)
    q = np.array([0.5] + [stats.EPSILON] * 8 + [0.5])
    assert report.features[0].score == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_categorical_scores_match_scipy() -> None:
    ref = ["a"] * 10 + ["b"] * 20 + ["c"] * 30
    cur = ["a"] * 12 + ["b"] * 18 + ["c"] * 25
    report = compute_drift(
        {"js": ref, "chi": ref, "psi": ref},
        {"js": cur, "chi": cur, "psi": cur},
        DriftOptions(
            min_rows=1,
            overrides={
                "chi": FeatureOverride(method="chisquare"),
                "psi": FeatureOverride(method="psi"),
            },
        ),
    )
    js, chi, psi = report.features
    p, q = np.array([10, 20, 30]) / 60, np.array([12, 18, 25]) / 55
    assert js.kind == "categorical"
    assert js.score == pytest.approx(jensenshannon(p, q), rel=1e-12)
    expected = st.chisquare([12, 18, 25], p * 55)
    assert chi.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert chi.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert chi.score == pytest.approx(math.sqrt(expected.statistic / 55))
    assert psi.score == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_category_unseen_in_reference_is_expected_at_epsilon() -> None:
    ref = pa.array(["a"] * 50 + ["b"] * 50)
    cur = pa.array(["a"] * 40 + ["b"] * 40 + ["new"] * 20)
    report = compute_drift(
        pa.table({"c": ref}),
        pa.table({"c": cur}),
        DriftOptions(min_rows=1, overrides={"c": FeatureOverride(method="chisquare")}),
    )
    shares = np.array([0.5, 0.5, stats.EPSILON])
    shares /= shares.sum()
    expected = st.chisquare([40, 40, 20], shares * 100)
    f = report.features[0]
    assert f.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert f.flagged


def test_p_value_distributions_match_scipy() -> None:
    for x in (0.05, 0.5, 1.0, 1.17, 1.2, 2.0, 4.0):
        assert stats.kolmogorov_sf(x) == pytest.approx(st.kstwobign.sf(x), abs=1e-14)
    for x, dof in ((0.5, 1), (3.0, 2), (10.0, 5), (50.0, 30), (200.0, 9), (1e-3, 3)):
        assert stats.chi2_sf(x, dof) == pytest.approx(st.chi2.sf(x, dof), rel=1e-10)


def _window(seed: int, rows: int, shifted: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shift = 0.5 if shifted else 0.0
    colours = np.array(["red", "green", "blue", "grey"])
    weights = [0.25, 0.25, 0.25, 0.25] if not shifted else [0.4, 0.2, 0.2, 0.2]
    return {
        "steady": rng.normal(size=rows),
        "steady_cat": colours[rng.choice(4, size=rows, p=[0.25] * 4)],
        "moved": rng.normal(shift, 1.0, size=rows),
        "moved_cat": colours[rng.choice(4, size=rows, p=weights)],
        "nudged": rng.normal(0.03 if shifted else 0.0, 1.0, size=rows),
    }


def test_effect_sizes_flag_exactly_the_shifted_columns_at_100k_rows() -> None:
    report = compute_drift(_window(1, 100_000, False), _window(2, 100_000, True))
    assert report.status == "ok"
    assert report.flagged == ["moved", "moved_cat"]
    # a significance test at p < 0.05 flags the unshifted-in-effect column as well
    alpha = DriftOptions(overrides={"nudged": FeatureOverride(method="ks", alpha=0.05)})
    nudged = compute_drift(_window(1, 100_000, False), _window(2, 100_000, True), alpha)
    assert "nudged" in nudged.flagged
    assert nudged.features[-1].threshold is None


def test_predictions_are_a_column_like_any_other() -> None:
    rng = np.random.default_rng(5)
    ref = {"x": rng.normal(size=5000), "prediction": rng.normal(size=5000)}
    cur = {"x": rng.normal(size=5000), "prediction": rng.normal(1.0, 1.0, size=5000)}
    report = compute_drift(ref, cur, DriftOptions(predictions=("prediction",)))
    roles = {f.column: f.role for f in report.features}
    assert roles == {"x": "feature", "prediction": "prediction"}
    assert report.flagged == ["prediction"]


def test_too_few_rows_is_a_state_not_a_score() -> None:
    rng = np.random.default_rng(7)
    report = compute_drift({"x": rng.normal(size=5000)}, {"x": rng.normal(3.0, 1.0, size=999)})
    assert report.status == "too_few_rows"
    f = report.features[0]
    assert (f.status, f.score, f.flagged, f.rows_current) == ("too_few_rows", None, False, 999)
    assert compute_drift({"x": [1.0] * 1000}, {"x": [2.0] * 1000}).status == "ok"


def test_missing_values_are_left_out_and_their_share_is_a_signal() -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(size=10_000)
    cur = rng.normal(size=10_000)
    cur[:3000] = np.nan
    cur[3000:3010] = np.inf
    cats = pa.array(["a", None] * 5000)
    report = compute_drift({"x": ref, "c": pa.array(["a", "b"] * 5000)}, {"x": cur, "c": cats})
    x, c = report.features
    assert x.rows_current == 6990 and not x.flagged
    assert x.missing_current == pytest.approx(0.301) and x.missing_flagged
    assert c.rows_current == 5000 and c.missing_current == 0.5 and c.missing_flagged
    assert report.flagged == ["x", "c"]
    mostly_missing = np.full(10_000, np.nan)
    mostly_missing[:10] = 0.0
    y = compute_drift({"x": ref}, {"x": mostly_missing}).features[0]
    assert (y.status, y.missing_flagged) == ("too_few_rows", True)


def test_column_mismatch_names_the_column() -> None:
    with pytest.raises(InvalidInput, match="current data has no column 'b'"):
        compute_drift({"a": [1.0], "b": [2.0]}, {"a": [1.0]})
    with pytest.raises(InvalidInput, match="reference data has no column 'extra'"):
        compute_drift({"a": [1.0]}, {"a": [1.0], "extra": [3.0]})
    with pytest.raises(InvalidInput, match="numeric in the reference but categorical"):
        compute_drift({"a": [1.0]}, {"a": ["x"]})
    report = compute_drift({"a": [1.0], "b": [2.0]}, {"a": [1.0]}, DriftOptions(columns=("a",)))
    assert [f.column for f in report.features] == ["a"]


def test_overrides_choose_method_threshold_and_kind() -> None:
    rng = np.random.default_rng(13)
    ref = {"x": rng.normal(size=5000), "code": rng.integers(0, 3, size=5000)}
    cur = {"x": rng.normal(0.15, 1.0, size=5000), "code": rng.integers(0, 3, size=5000)}
    default = compute_drift(ref, cur)
    assert default.flagged == ["x"]
    options = DriftOptions(
        overrides={
            "x": FeatureOverride(method="psi", threshold=0.5),
            "code": FeatureOverride(kind="categorical", method="chisquare"),
        }
    )
    x, code = compute_drift(ref, cur, options).features
    assert (x.method, x.threshold, x.flagged) == ("psi", 0.5, False)
    assert (code.kind, code.method) == ("categorical", "chisquare")
    assert code.p_value is not None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (FeatureOverride(method="jensenshannon"), "is numeric: method 'jensenshannon'"),
        (FeatureOverride(method="psi", alpha=0.05), "no p-value"),
        (FeatureOverride(threshold=-1.0), "threshold must be a positive"),
        (FeatureOverride(alpha=2.0), "alpha must be in"),
    ],
)
def test_bad_overrides_are_invalid_input(override: FeatureOverride, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        compute_drift({"x": [1.0]}, {"x": [1.0]}, DriftOptions(overrides={"x": override}))


def test_override_of_an_unknown_column_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="'nope'"):
        options = DriftOptions(overrides={"nope": FeatureOverride()})
        compute_drift({"x": [1.0]}, {"x": [1.0]}, options)


def test_report_is_plain_json() -> None:
    rng = np.random.default_rng(17)
    report = compute_drift(
        {"x": rng.normal(size=2000), "c": ["a", "b"] * 1000},
        {"x": rng.normal(size=2000), "c": ["a", "new"] * 1000},
    )
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["flagged"] == ["c"]
    assert data["features"][0]["kind"] == "numeric"
    assert set(data["features"][1]) >= {
        "kind",
        "method",
        "score",
        "threshold",
        "flagged",
        "p_value",
        "rows_reference",
        "rows_current",
    }


def test_columns_compared_in_threads_give_the_same_report() -> None:
    ref, cur = _window(19, 20_000, False), _window(20, 20_000, True)
    one = compute_drift(ref, cur, DriftOptions(workers=1))
    three = compute_drift(ref, cur, DriftOptions(workers=3))
    assert one == three
    with pytest.raises(InvalidInput, match="workers must be at least 1"):
        compute_drift(ref, cur, DriftOptions(workers=0))


def test_a_constant_reference_divides_by_the_floor() -> None:
    report = compute_drift({"x": [1.0] * 1000}, {"x": [2.0] * 1000})
    assert report.status == "ok"
    assert report.features[0].score == pytest.approx(1.0 / stats.MIN_STD)


def test_column_kinds_follow_their_types() -> None:
    words = ["a", "b", "c", "d"] * 250
    ref = pa.table(
        {
            "ints": pa.array([*range(999), None], type=pa.int32()),
            "flags": pa.array([True, False] * 500),
            "words": pa.array(words).dictionary_encode(),
            "wide": pa.array(words, type=pa.large_string()),
        }
    )
    cur = {
        "ints": np.arange(1000, dtype=np.int64),
        "flags": np.array([True, False] * 500),
        "words": pa.array(words),
        "wide": words,
    }
    ints, flags, dict_words, wide = compute_drift(ref, cur).features
    assert (ints.kind, ints.rows_reference, ints.missing_reference) == ("numeric", 999, 0.001)
    assert (flags.kind, flags.score) == ("categorical", 0.0)
    assert (dict_words.kind, dict_words.score, wide.score) == ("categorical", 0.0, 0.0)


def test_a_column_missing_throughout_a_window_takes_the_other_sides_kind() -> None:
    rng = np.random.default_rng(23)
    ref = {"x": rng.normal(size=2000), "c": ["a", "b"] * 1000}
    cur = {"x": [None] * 2000, "c": pa.array([None] * 2000)}
    x, c = compute_drift(ref, cur).features
    assert (x.kind, x.status, x.missing_current, x.missing_flagged) == (
        "numeric",
        "too_few_rows",
        1.0,
        True,
    )
    assert (c.kind, c.status, c.missing_current, c.missing_flagged) == (
        "categorical",
        "too_few_rows",
        1.0,
        True,
    )
    back = compute_drift(cur, ref).features[0]
    assert (back.kind, back.missing_reference) == ("numeric", 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st_h.lists(st_h.integers(-5, 5), min_size=1, max_size=40),
    st_h.lists(st_h.integers(-5, 5), min_size=1, max_size=40),
)
def test_wasserstein_and_ks_match_scipy_on_any_small_sample(ref: list[int], cur: list[int]) -> None:
    a, b = np.array(ref, dtype=float), np.array(cur, dtype=float)
    scores = stats.numeric_scores(np.sort(a), np.sort(b))
    std = max(float(np.std(a)), stats.MIN_STD)
    assert scores.wasserstein * std == pytest.approx(st.wasserstein_distance(a, b), abs=1e-9)
    with warnings.catch_warnings():  # scipy's p-value for one-row samples divides by zero
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = st.ks_2samp(a, b, method="asymp").statistic
    assert scores.ks == pytest.approx(expected, abs=1e-12)


def test_unreadable_input_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="reference columns differ in length"):
        compute_drift({"a": [1.0, 2.0], "b": [1.0]}, {"a": [1.0], "b": [1.0]})
    with pytest.raises(InvalidInput, match="current column 'a' cannot be read"):
        compute_drift({"a": ["x"]}, {"a": ["x", 1]})
    with pytest.raises(InvalidInput, match="must be a pyarrow Table or a mapping"):
        compute_drift({"a": [1.0]}, [1.0])  # type: ignore[arg-type]
    stamps = pa.array([0, 1], type=pa.timestamp("us"))
    with pytest.raises(InvalidInput, match=r"column 'ts' is timestamp\[us\]: drift compares"):
        compute_drift({"ts": stamps}, {"ts": stamps})
    tensors = pa.array([[1.0, 2.0], [3.0]])
    with pytest.raises(InvalidInput, match="column 't' is list<item: double>"):
        compute_drift({"t": tensors}, {"t": tensors})


def test_tables_of_many_chunks_give_the_same_report() -> None:
    ref, cur = _window(29, 4000, False), _window(30, 4000, True)
    whole = pa.table(ref)
    chunked = pa.concat_tables([whole.slice(0, 1500), whole.slice(1500)])
    assert chunked.column("steady").num_chunks == 2
    assert compute_drift(chunked, cur) == compute_drift(whole, cur) == compute_drift(ref, cur)


def test_each_scored_column_carries_chart_data() -> None:
    rng = np.random.default_rng(31)
    many = np.array([f"k{i:02d}" for i in range(30)])
    ref = {"x": rng.normal(size=2000), "c": many[rng.integers(0, 30, 2000)], "f": [True] * 2000}
    cur = {"x": rng.normal(size=2000), "c": many[rng.integers(0, 30, 2000)], "f": [False] * 2000}
    x, c, f = compute_drift(ref, cur).features
    assert x.histogram is not None and len(x.histogram.labels) == 10
    assert x.histogram.reference == pytest.approx([0.1] * 10)
    assert x.histogram.labels[0].startswith("< ") and x.histogram.labels[-1].startswith(">= ")
    assert sum(x.histogram.current) == pytest.approx(1.0)
    assert c.histogram is not None and len(c.histogram.labels) == 21
    assert c.histogram.labels[-1] == "(other)" and sum(c.histogram.reference) == pytest.approx(1)
    assert f.histogram is not None and set(f.histogram.labels) == {"True", "False"}
    small = compute_drift({"x": [1.0] * 10}, {"x": [2.0] * 10}).features[0]
    assert small.histogram is None


@pytest.mark.parametrize("counts", [([10, 20, 30], [12, 18, 25]), ([5, 0, 7, 1], [0, 9, 2, 4])])
def test_the_homogeneity_p_value_matches_scipy(counts: tuple[list[int], list[int]]) -> None:
    ref, cur = (np.array(c, dtype=np.int64) for c in counts)
    keep = (ref > 0) | (cur > 0)
    expected = st.chi2_contingency(np.vstack([ref[keep], cur[keep]]), correction=False)
    assert stats.homogeneity_p_value(ref, cur) == pytest.approx(expected.pvalue, rel=1e-9)


def _same(seed: int, n: int) -> tuple[dict[str, object], dict[str, object]]:
    rng = np.random.default_rng(seed)
    letters = list("abcdefgh")
    return (
        {"x": rng.normal(size=n), "c": rng.choice(letters, n)},
        {"x": rng.normal(size=n), "c": rng.choice(letters, n)},
    )


def test_small_windows_of_one_distribution_are_not_flagged_on_noise() -> None:
    # 200 rows a side: the effect sizes of two samples of one distribution pass 0.1 by
    # chance in most windows; the significance gate keeps about its 5 % of them
    windows = [_same(seed, 200) for seed in range(100)]
    alone, gated = DriftOptions(min_rows=50, significance=None), DriftOptions(min_rows=50)
    noisy = sum(len(compute_drift(r, c, alone).flagged) for r, c in windows)
    kept = sum(len(compute_drift(r, c, gated).flagged) for r, c in windows)
    assert noisy >= 100 and kept <= 15, (noisy, kept)
    report = compute_drift(*windows[1], gated)
    x = report.features[0]
    assert x.score is not None and x.score >= 0.1 and not x.flagged  # large, but not real
    assert x.significance_p is not None and x.significance_p > 0.05


def test_a_real_shift_in_a_small_window_is_still_flagged() -> None:
    rng = np.random.default_rng(3)
    shifted = {"x": rng.normal(1.0, size=200), "c": rng.choice(list("ab"), 200, p=[0.8, 0.2])}
    base = {"x": rng.normal(size=200), "c": rng.choice(list("ab"), 200)}
    report = compute_drift(base, shifted, DriftOptions(min_rows=50))
    assert report.flagged == ["x", "c"]
    assert all(f.significance_p is not None and f.significance_p < 1e-3 for f in report.features)
    with pytest.raises(InvalidInput, match="significance must be in"):
        compute_drift(base, shifted, DriftOptions(min_rows=50, significance=1.5))
