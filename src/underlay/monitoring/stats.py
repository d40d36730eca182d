"""The numbers behind drift: two-sample distances and tests over numpy arrays, no pandas.

Numeric columns arrive sorted, once each, and every numeric measure reads the same two sorted
arrays: the two samples are merged by a stable argsort of the two sorted runs (timsort merges
them in linear time), and one pass over
the merged values gives both empirical CDFs, hence the Wasserstein distance (the area between
them) and the Kolmogorov-Smirnov statistic (their largest gap). Quantile bins for PSI are
``np.searchsorted`` of a handful of edges. Categorical columns arrive as counts per category
(``np.bincount`` of dictionary codes), over the union of both samples' categories.

P-values need no scipy: the Kolmogorov distribution is its alternating series, the chi-square
survival function the regularised upper incomplete gamma function (series / continued fraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Replaces an empty bin's share in PSI (and an unseen category's reference share in the
#: chi-square test), so the logarithm and the division stay finite. Evidently uses the same.
EPSILON = 1e-4
#: The reference's standard deviation is floored here before dividing (a constant reference).
MIN_STD = 1e-3


@dataclass(frozen=True)
class NumericScores:
    """Every numeric measure of one column, from one merge of the two sorted samples."""

    wasserstein: float
    """Wasserstein-1 distance divided by the reference's (population) standard deviation."""
    ks: float
    """Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    ks_p_value: float
    psi: float
    """Population stability index over quantile bins of the reference."""
    edges: FloatArray
    """Inner edges of those bins; ``ref_shares`` and ``cur_shares`` has one more entry each."""
    ref_shares: FloatArray
    cur_shares: FloatArray


@dataclass(frozen=True)
class CategoricalScores:
    jensenshannon: float
    """Jensen-Shannon distance (natural logarithm, so at most sqrt(ln 2) ~ 0.833)."""
    psi: float
    chisquare_w: float
    """Cohen's w of the chi-square test: sqrt(statistic / current rows)."""
    chisquare: float
    chisquare_p_value: float


def cdf_gaps(ref: FloatArray, cur: FloatArray) -> tuple[FloatArray, FloatArray]:
    """|F_ref - F_cur| at each merged value but the last, and the gap to the next value.

    Both inputs sorted ascending, without NaN. Ties need no care: between equal values the gap
    is 0, and at the last of a run of equal values both CDFs count the whole run.
    """
    n, m = ref.size, cur.size
    both = np.concatenate((cur, ref))
    # a stable argsort of two sorted runs is one linear merge (timsort finds the runs)
    order = np.argsort(both, kind="stable")
    steps: FloatArray = np.diff(both[order])
    del both
    from_ref = order[:-1] >= m
    del order
    # F_ref - F_cur = c/n - (k - c)/m, with c the reference values so far and k all values
    gaps: FloatArray = np.cumsum(from_ref, dtype=np.float64)
    del from_ref
    gaps *= 1.0 / n + 1.0 / m
    seen = np.arange(1, n + m, dtype=np.float64)
    seen *= 1.0 / m
    gaps -= seen
    del seen
    np.abs(gaps, out=gaps)
    return gaps, steps


def quantile_edges(ref: FloatArray, bins: int) -> FloatArray:
    """Inner edges of ``bins`` equal-count bins of the sorted reference (ties merge bins)."""
    picks = (np.arange(1, bins, dtype=np.int64) * ref.size) // bins
    edges: FloatArray = np.unique(ref[picks])
    return edges


def binned_shares(values: FloatArray, edges: FloatArray) -> FloatArray:
    """Share of the sorted ``values`` in each bin [e_i, e_i+1), with the open ends."""
    inner = np.searchsorted(values, edges, side="left")
    counts = np.diff(np.concatenate(([0], inner, [values.size])))
    shares: FloatArray = counts / values.size
    return shares


def psi(ref_shares: FloatArray, cur_shares: FloatArray) -> float:
    """sum (q - p) ln(q / p), with empty shares replaced by :data:`EPSILON`."""
    p = np.where(ref_shares > 0, ref_shares, EPSILON)
    q = np.where(cur_shares > 0, cur_shares, EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_scores(ref: FloatArray, cur: FloatArray, bins: int = 10) -> NumericScores:
    """All numeric measures of two sorted, NaN-free, non-empty samples."""
    gaps, steps = cdf_gaps(ref, cur)
    std = max(float(np.std(ref)), MIN_STD)
    wasserstein = float(gaps @ steps) / std
    moving = steps > 0
    ks = float(gaps[moving].max()) if moving.any() else 0.0
    n, m = ref.size, cur.size
    en = n * m / (n + m)
    edges = quantile_edges(ref, bins)
    ref_shares, cur_shares = binned_shares(ref, edges), binned_shares(cur, edges)
    return NumericScores(
        wasserstein=wasserstein,
        ks=ks,
        ks_p_value=kolmogorov_sf(math.sqrt(en) * ks),
        psi=psi(ref_shares, cur_shares),
        edges=edges,
        ref_shares=ref_shares,
        cur_shares=cur_shares,
    )


def jensenshannon(p: FloatArray, q: FloatArray) -> float:
    """Jensen-Shannon distance of two distributions (natural log), as scipy computes it."""
    mid = (p + q) / 2.0

    def kl(a: FloatArray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / mid[nz])))

    return math.sqrt(max((kl(p) + kl(q)) / 2.0, 0.0))


def categorical_scores(ref_counts: IntArray, cur_counts: IntArray) -> CategoricalScores:
    """All categorical measures from counts over the same categories (both sums > 0)."""
    keep = (ref_counts > 0) | (cur_counts > 0)
    ref_counts, cur_counts = ref_counts[keep], cur_counts[keep]
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    # goodness of fit of the current counts to the reference shares; a category the
    # reference never saw is expected at EPSILON (renormalised), so it weighs heavily
    expected_shares = np.where(p > 0, p, EPSILON)
    expected_shares /= expected_shares.sum()
    rows = float(cur_counts.sum())
    statistic = float(np.sum((cur_counts - rows * expected_shares) ** 2 / expected_shares) / rows)
    dof = max(int(keep.sum()) - 1, 1)
    return CategoricalScores(
        jensenshannon=jensenshannon(p, q),
        psi=psi(p, q),
        chisquare_w=math.sqrt(statistic / rows),
        chisquare=statistic,
        chisquare_p_value=chi2_sf(statistic, dof),
    )


def homogeneity_p_value(ref_counts: IntArray, cur_counts: IntArray) -> float:
    """The p-value of Pearson's chi-square test that two samples' counts over the same
    categories come from one distribution (the 2 x k contingency table, no continuity
    correction: scipy's ``chi2_contingency(..., correction=False)``). Unlike the
    goodness-of-fit test above, it counts the reference's own sampling noise, which matters
    when the reference is no larger than the current window."""
    keep = (ref_counts > 0) | (cur_counts > 0)
    table = np.vstack([ref_counts[keep], cur_counts[keep]]).astype(np.float64)
    if table.shape[1] < 2:
        return 1.0
    total = table.sum()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / total
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return chi2_sf(statistic, table.shape[1] - 1)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (scipy's ``kstwobign.sf``)."""
    if x <= 0.0:
        return 1.0
    if x < 1.18:
        # Jacobi theta form, fast for small x: P(K <= x) = sqrt(2 pi)/x sum exp(-(2k-1)^2 pi^2/8x^2)
        c = -(math.pi**2) / (8.0 * x * x)
        total = sum(math.exp(c * (2 * k - 1) ** 2) for k in range(1, 8))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / x * total))
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-300:
            break
    return min(1.0, max(0.0, 2.0 * total))


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X > statistic) for a chi-square variable with ``dof`` degrees of freedom."""
    if statistic <= 0.0:
        return 1.0
    return _gamma_q(dof / 2.0, statistic / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (Numerical Recipes' gammq)."""
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # continued fraction for Q(a, x), modified Lentz
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)
