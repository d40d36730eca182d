"""Drift of a current sample against a reference sample, column by column.

:func:`compute_drift` takes two tables (``pyarrow.Table`` or a mapping of column name to a
numpy array, a pyarrow array or a list) and returns a :class:`DriftReport`: per column its kind,
the method used, the score, the threshold, whether it is flagged, the p-value where the method
has one, the rows compared, the share of missing values on each side and a histogram for charts.

* Numeric columns (integers, floats): ``wasserstein`` (default) — Wasserstein-1 distance divided
  by the reference's population standard deviation (floored at 0.001); ``psi`` over ten quantile
  bins of the reference; ``ks`` — the Kolmogorov-Smirnov statistic, with its asymptotic p-value.
* Categorical columns (strings, booleans, dictionaries): ``jensenshannon`` (default) — the
  Jensen-Shannon distance of the category shares (natural log); ``psi`` over the categories;
  ``chisquare`` — Cohen's w of the goodness-of-fit test of the current counts to the reference
  shares, with the chi-square p-value.
* Every default threshold is an effect size, 0.1: a column is flagged when its score is at least
  the threshold. Once windows reach 100k rows a significance test flags differences too small
  to act on; an override may still ask for one (``alpha``: flagged when p < alpha, ``ks`` and
  ``chisquare`` only).
* Small windows are noisy the other way: two samples of a few hundred rows from the same
  distribution can differ by 0.1 by chance. So an effect size over its threshold is flagged
  only when the same rows also differ significantly (``DriftOptions.significance``, p < 0.05 of
  the two-sample KS test for a numeric column, of the chi-square test of homogeneity for a
  categorical one; the p-value is reported as ``significance_p``). At large windows every
  real shift passes this gate, so the flags there are the effect sizes' alone.
* Missing values (null, NaN, +-inf) are left out of the distributions; the share missing on each
  side is reported and is its own signal: ``missing_flagged`` when the shares differ by at least
  ``DriftOptions.missing_threshold``.
* A side with fewer than ``DriftOptions.min_rows`` non-missing values is ``too_few_rows``:
  no score, not flagged — the report says so instead of reporting noise.
* Predictions are a column like any other: name them in ``DriftOptions.predictions`` and their
  rows say ``role="prediction"``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa

from underlay.errors import InvalidInput
from underlay.monitoring import stats

Kind = Literal["numeric", "categorical"]
Status = Literal["ok", "too_few_rows"]
Columns: TypeAlias = "pa.Table | Mapping[str, Any]"

METHODS: dict[str, tuple[str, ...]] = {
    "numeric": ("wasserstein", "psi", "ks"),
    "categorical": ("jensenshannon", "psi", "chisquare"),
}
DEFAULT_METHOD: dict[str, str] = {"numeric": "wasserstein", "categorical": "jensenshannon"}
DEFAULT_THRESHOLD = 0.1
WITH_P_VALUE = ("ks", "chisquare")


@dataclass(frozen=True)
class FeatureOverride:
    """What one column uses instead of the defaults; ``None`` keeps the default."""

    kind: Kind | None = None
    method: str | None = None
    threshold: float | None = None
    alpha: float | None = None
    """Flag on p < alpha instead of on the score (methods with a p-value only)."""


@dataclass(frozen=True)
class DriftOptions:
    min_rows: int = 1000
    """Fewer non-missing values than this on either side: ``too_few_rows``, not a score."""
    missing_threshold: float = 0.1
    """Flag a column whose missing share moved by at least this much."""
    psi_bins: int = 10
    predictions: tuple[str, ...] = ()
    """Columns that hold the model's predictions (``role="prediction"`` in the report)."""
    columns: tuple[str, ...] | None = None
    """Compare only these (each must be on both sides); by default, every column."""
    overrides: Mapping[str, FeatureOverride] = field(default_factory=dict)
    significance: float | None = 0.05
    """An effect size over its threshold is flagged only when the KS (numeric) or chi-square
    (categorical) p-value of the same rows is below this; ``None``: the effect size alone."""
    workers: int = 1
    """Columns compared at once, in threads (numpy's sorts release the GIL). One by default:
    on a busy two-core machine two threads were slower than one; each numeric column at 1M
    rows holds about 60 MB while it is compared."""


@dataclass(frozen=True)
class Histogram:
    """Shares per bin on each side, for a chart: the reference's deciles for a numeric column,
    the most common categories (then ``(other)``) for a categorical one."""

    labels: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]


@dataclass(frozen=True)
class FeatureDrift:
    column: str
    role: Literal["feature", "prediction"]
    kind: Kind
    method: str
    status: Status
    score: float | None
    threshold: float | None
    alpha: float | None
    p_value: float | None
    flagged: bool
    rows_reference: int
    rows_current: int
    missing_reference: float
    missing_current: float
    missing_flagged: bool
    statistic: float | None = None
    """The raw chi-square statistic behind a ``chisquare`` score."""
    histogram: Histogram | None = None
    significance_p: float | None = None
    """The p-value of the significance gate (KS or chi-square on the same rows)."""


@dataclass(frozen=True)
class DriftReport:
    rows_reference: int
    rows_current: int
    min_rows: int
    status: Status
    features: tuple[FeatureDrift, ...]

    @property
    def flagged(self) -> list[str]:
        """Columns whose distribution or missing share drifted."""
        return [f.column for f in self.features if f.flagged or f.missing_flagged]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (no NaN or infinity)."""
        out = asdict(self)
        out["features"] = [asdict(f) for f in self.features]
        out["flagged"] = self.flagged
        return out


@dataclass
class _Column:
    kind: Kind
    data: pa.ChunkedArray | np.ndarray[Any, Any]
    rows: int
    untyped: bool = False
    """Every value missing, so the column's type says nothing of its kind."""


def compute_drift(
    reference: Columns, current: Columns, options: DriftOptions | None = None
) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column (see the module docstring)."""
    options = options or DriftOptions()
    _check_options(options)
    ref_cols, cur_cols = _columns(reference, "reference"), _columns(current, "current")
    names = _names(ref_cols, cur_cols, options)
    rows_ref, rows_cur = _rows(ref_cols, "reference"), _rows(cur_cols, "current")
    status: Status = "ok" if min(rows_ref, rows_cur) >= options.min_rows else "too_few_rows"

    def one(name: str) -> FeatureDrift:
        return _feature(name, ref_cols[name], cur_cols[name], options, status)

    workers = options.workers
    if workers == 1 or len(names) < 2:
        features = tuple(map(one, names))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drift") as pool:
            features = tuple(pool.map(one, names))
    return DriftReport(rows_ref, rows_cur, options.min_rows, status, features)


def _check_options(options: DriftOptions) -> None:
    if options.min_rows < 1:
        raise InvalidInput(f"min_rows must be at least 1, not {options.min_rows}")
    if options.workers < 1:
        raise InvalidInput(f"workers must be at least 1, not {options.workers}")
    if options.psi_bins < 2:
        raise InvalidInput(f"psi_bins must be at least 2, not {options.psi_bins}")
    if not 0 < options.missing_threshold <= 1:
        raise InvalidInput("missing_threshold must be in (0, 1]")
    if options.significance is not None and not 0 < options.significance < 1:
        raise InvalidInput("significance must be in (0, 1), or None for the effect size alone")
    for name, o in options.overrides.items():
        if o.kind is not None and o.kind not in METHODS:
            raise InvalidInput(f"column {name!r}: kind must be numeric or categorical")
        if o.threshold is not None and not (math.isfinite(o.threshold) and o.threshold > 0):
            raise InvalidInput(f"column {name!r}: threshold must be a positive number")
        if o.alpha is not None and not 0 < o.alpha < 1:
            raise InvalidInput(f"column {name!r}: alpha must be in (0, 1)")
        if o.alpha is not None and o.threshold is not None:
            raise InvalidInput(f"column {name!r}: give a threshold or an alpha, not both")


def _columns(table: Columns, side: str) -> dict[str, Any]:
    if isinstance(table, pa.Table):
        return {name: table.column(name) for name in table.column_names}
    if isinstance(table, Mapping):
        return {str(name): values for name, values in table.items()}
    raise InvalidInput(f"the {side} data must be a pyarrow Table or a mapping of columns")


def _names(ref: dict[str, Any], cur: dict[str, Any], options: DriftOptions) -> list[str]:
    wanted = list(options.columns) if options.columns is not None else None
    for side, cols, other in (("reference", ref, cur), ("current", cur, ref)):
        missing = [n for n in (wanted if wanted is not None else other) if n not in cols]
        if missing:
            raise InvalidInput(
                f"the {side} data has no column {', '.join(map(repr, missing))}; "
                "compare the same columns on both sides"
            )
    names = wanted if wanted is not None else list(ref)
    for name in [*options.overrides, *options.predictions]:
        if name not in names:
            raise InvalidInput(f"an option names column {name!r}, which is not compared")
    return names


def _rows(cols: dict[str, Any], side: str) -> int:
    lengths = {name: len(values) for name, values in cols.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidInput(f"the {side} columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def _normalise(name: str, values: Any, side: str, kind: Kind | None) -> _Column:
    """A numeric column as float64 with NaN for missing; any other as a pyarrow array."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf" and kind != "categorical":
        return _Column("numeric", values.astype(np.float64, copy=False), values.size)
    try:
        if isinstance(values, np.ndarray | list | tuple):
            values = pa.array(values, from_pandas=True)
        if isinstance(values, pa.Array):
            values = pa.chunked_array([values])
        if not isinstance(values, pa.ChunkedArray):
            raise TypeError(type(values).__name__)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise InvalidInput(f"{side} column {name!r} cannot be read as a column: {exc}") from exc
    t = values.type
    if pa.types.is_null(t):
        if kind == "numeric":
            return _Column("numeric", np.full(len(values), np.nan), len(values), untyped=True)
        return _Column("categorical", values, len(values), untyped=True)
    if pa.types.is_dictionary(t):
        values, t = values.cast(t.value_type), t.value_type
    numeric_type = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if numeric_type and kind != "categorical":
        data = values.cast(pa.float64()).to_numpy()
        return _Column("numeric", data, len(data))
    if kind == "numeric":
        raise InvalidInput(f"{side} column {name!r} is {t}, which is not numeric")
    if not (numeric_type or _is_category_type(t)):
        raise InvalidInput(
            f"{side} column {name!r} is {t}: drift compares numeric and categorical columns; "
            "leave it out with DriftOptions(columns=...)"
        )
    return _Column("categorical", values, len(values))


def _is_category_type(t: Any) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_boolean(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _feature(
    name: str, ref_values: Any, cur_values: Any, options: DriftOptions, status: Status
) -> FeatureDrift:
    override = options.overrides.get(name, FeatureOverride())
    ref = _normalise(name, ref_values, "reference", override.kind)
    cur = _normalise(name, cur_values, "current", override.kind)
    if ref.kind != cur.kind and cur.untyped:
        cur = _normalise(name, cur_values, "current", ref.kind)
    elif ref.kind != cur.kind and ref.untyped:
        ref = _normalise(name, ref_values, "reference", cur.kind)
    if ref.kind != cur.kind:
        raise InvalidInput(
            f"column {name!r} is {ref.kind} in the reference but {cur.kind} in the current data"
        )
    kind = ref.kind
    method, threshold = _method(name, kind, override)
    if kind == "numeric":
        measured = _numeric(ref, cur, method, options)
    else:
        measured = _categorical(ref, cur, method)
    score, p_value, statistic, n_ref, n_cur, histogram, gate_p = measured
    enough = status == "ok" and min(n_ref, n_cur) >= options.min_rows
    miss_ref = (ref.rows - n_ref) / ref.rows if ref.rows else 0.0
    miss_cur = (cur.rows - n_cur) / cur.rows if cur.rows else 0.0
    if not enough:
        score = p_value = statistic = gate_p = None
    if score is None:
        flagged = False
    elif override.alpha is not None:
        flagged = p_value is not None and p_value < override.alpha
    else:
        flagged = score >= (threshold or DEFAULT_THRESHOLD) and (
            options.significance is None or gate_p is None or gate_p < options.significance
        )
    return FeatureDrift(
        column=name,
        role="prediction" if name in options.predictions else "feature",
        kind=kind,
        method=method,
        status="ok" if enough else "too_few_rows",
        score=score,
        threshold=threshold,
        alpha=override.alpha,
        p_value=p_value,
        flagged=flagged,
        rows_reference=n_ref,
        rows_current=n_cur,
        missing_reference=miss_ref,
        missing_current=miss_cur,
        missing_flagged=status == "ok" and abs(miss_cur - miss_ref) >= options.missing_threshold,
        statistic=statistic,
        histogram=histogram if enough else None,
        significance_p=gate_p,
    )


def _method(name: str, kind: Kind, override: FeatureOverride) -> tuple[str, float | None]:
    """The column's method and threshold (``None`` when it flags on a p-value)."""
    method = override.method or DEFAULT_METHOD[kind]
    if method not in METHODS[kind]:
        raise InvalidInput(
            f"column {name!r} is {kind}: method {method!r} does not apply "
            f"(use {', '.join(METHODS[kind])})"
        )
    if override.alpha is not None:
        if method not in WITH_P_VALUE:
            raise InvalidInput(f"column {name!r}: method {method!r} has no p-value for an alpha")
        return method, None
    return method, override.threshold or DEFAULT_THRESHOLD


# score, the method's p-value, chi-square statistic, rows on each side, histogram, gate p-value
_Measured = tuple[
    float | None, float | None, float | None, int, int, Histogram | None, float | None
]
TOP_CATEGORIES = 20


def _numeric(ref: _Column, cur: _Column, method: str, options: DriftOptions) -> _Measured:
    a, b = _sorted_finite(ref.data), _sorted_finite(cur.data)
    if min(a.size, b.size) < options.min_rows or not a.size or not b.size:
        return None, None, None, a.size, b.size, None, None
    s = stats.numeric_scores(a, b, options.psi_bins)
    e = [f"{x:.4g}" for x in s.edges]
    labels = (
        f"< {e[0]}",
        *(f"{lo} to {hi}" for lo, hi in itertools.pairwise(e)),
        f">= {e[-1]}",
    )
    histogram = Histogram(labels, tuple(s.ref_shares.tolist()), tuple(s.cur_shares.tolist()))
    if method == "ks":
        return s.ks, s.ks_p_value, None, a.size, b.size, histogram, s.ks_p_value
    score = s.psi if method == "psi" else s.wasserstein
    return score, None, None, a.size, b.size, histogram, s.ks_p_value


def _sorted_finite(values: Any) -> stats.FloatArray:
    data = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        data = data[finite]
    return np.sort(data)


def _categorical(ref: _Column, cur: _Column, method: str) -> _Measured:
    ref_counts, cur_counts, names = _category_counts(ref.data, cur.data)
    n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
    if not n_ref or not n_cur:
        return None, None, None, n_ref, n_cur, None, None
    s = stats.categorical_scores(ref_counts, cur_counts)
    histogram = _category_histogram(ref_counts, cur_counts, names)
    gate = stats.homogeneity_p_value(ref_counts, cur_counts)
    if method == "chisquare":
        return s.chisquare_w, s.chisquare_p_value, s.chisquare, n_ref, n_cur, histogram, gate
    score = s.psi if method == "psi" else s.jensenshannon
    return score, None, None, n_ref, n_cur, histogram, gate


def _category_histogram(ref_counts: Any, cur_counts: Any, names: Any) -> Histogram:
    """The :data:`TOP_CATEGORIES` most common categories (both sides together), then the rest."""
    p, q = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    top = np.argsort(-(p + q), kind="stable")[:TOP_CATEGORIES]
    labels = [str(v) for v in names.take(pa.array(top)).to_pylist()]
    ref_shares, cur_shares = p[top].tolist(), q[top].tolist()
    if len(top) < len(p):
        labels.append("(other)")
        ref_shares.append(max(0.0, 1.0 - sum(ref_shares)))
        cur_shares.append(max(0.0, 1.0 - sum(cur_shares)))
    return Histogram(tuple(labels), tuple(ref_shares), tuple(cur_shares))


def _category_counts(ref: Any, cur: Any) -> tuple[stats.IntArray, stats.IntArray, Any]:
    """Counts per category over the union of both sides' categories (missing left out)."""
    ref_chunks, cur_chunks = list(ref.chunks), list(cur.chunks)
    if ref.type != cur.type:
        ref_chunks = [c.cast(pa.large_string()) for c in ref_chunks]
        cur_chunks = [c.cast(pa.large_string()) for c in cur_chunks]
    both = pa.concat_arrays([*ref_chunks, *cur_chunks]) if ref_chunks or cur_chunks else None
    if both is None or len(both) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None
    encoded = both.dictionary_encode()
    size = len(encoded.dictionary)
    codes = encoded.indices.fill_null(size).to_numpy().astype(np.int64, copy=False)
    split = len(ref)
    ref_counts = np.bincount(codes[:split], minlength=size + 1)[:size]
    cur_counts = np.bincount(codes[split:], minlength=size + 1)[:size]
    return ref_counts.astype(np.int64), cur_counts.astype(np.int64), encoded.dictionary
