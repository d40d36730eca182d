"""Per-deployment counters: requests and errors by status, latency and batch-size histograms.

Cheap enough for the hot path (a lock, a bisect and a few integer adds per request) and
readable two ways: :meth:`DeploymentStats.snapshot` for ``deployments show`` and the API, and
the Prometheus text exposition format (:meth:`DeploymentStats.prometheus`, or
:func:`prometheus_text` for several deployments in one scrape, each metric family declared
once). Histograms are cumulative in the exposition, as Prometheus expects; the snapshot's
quantiles are estimated from the buckets by linear interpolation, so they are approximate.

Counters live in the process that serves the requests; with several server worker processes
each exposes its own and Prometheus sums them (``sum by (deployment)``), the usual practice
for multi-process servers.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

PREFIX = "underlay_serving"


class Histogram:
    """Counts per bucket (upper bounds, plus +Inf), a sum and a count; not cumulative."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile (None when empty); the top bound past the last."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i else 0.0
                return low + (self.bounds[i] - low) * max(rank - seen, 0.0) / n
            seen += n
        return self.bounds[-1]

    def copy(self) -> Histogram:
        other = Histogram(self.bounds)
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other


class DeploymentStats:
    """The counters of one deployment (or one version of it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_status: dict[int, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.batches = Histogram(BATCH_BUCKETS)

    def observe_request(self, latency_s: float, status: int) -> None:
        with self._lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.latency.observe(latency_s)

    def observe_batch(self, rows: int) -> None:
        with self._lock:
            self.batches.observe(rows)

    def _copy(self) -> tuple[dict[int, int], Histogram, Histogram]:
        with self._lock:
            return dict(self.by_status), self.latency.copy(), self.batches.copy()

    def snapshot(self) -> dict[str, Any]:
        """Plain figures: requests, errors (status >= 400) by status, latency, batch sizes."""
        by_status, latency, batches = self._copy()
        requests = sum(by_status.values())
        errors = {s: n for s, n in by_status.items() if s >= 400}
        return {
            "requests": requests,
            "errors": sum(errors.values()),
            "server_errors": sum(n for s, n in errors.items() if s >= 500),
            "by_status": {str(s): n for s, n in sorted(by_status.items())},
            "latency_ms": {
                "count": latency.count,
                "mean": 1000 * latency.sum / latency.count if latency.count else None,
                "p50": _ms(latency.quantile(0.5)),
                "p99": _ms(latency.quantile(0.99)),
            },
            "batches": {
                "count": batches.count,
                "rows": int(batches.sum),
                "mean_rows": batches.sum / batches.count if batches.count else None,
                "p50_rows": batches.quantile(0.5),
                "max_rows_bucket": _top_bucket(batches),
            },
        }

    def prometheus(self, labels: Mapping[str, str]) -> str:
        """This deployment's counters in the Prometheus text exposition format."""
        return prometheus_text([(labels, self)])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _top_bucket(hist: Histogram) -> float | None:
    for i in range(len(hist.counts) - 1, -1, -1):
        if hist.counts[i]:
            return hist.bounds[i] if i < len(hist.bounds) else float("inf")
    return None


_FAMILIES = (
    ("requests_total", "counter", "Inference requests answered, by HTTP status."),
    ("errors_total", "counter", "Inference requests answered with a status of 400 or more."),
    ("request_latency_seconds", "histogram", "Time to answer an inference request."),
    ("batch_rows", "histogram", "Rows per model call after dynamic batching."),
)


def prometheus_text(series: Iterable[tuple[Mapping[str, str], DeploymentStats]]) -> str:
    """Several deployments' counters as one exposition (each family's HELP and TYPE once)."""
    copies = [(_labels(labels), stats._copy()) for labels, stats in series]
    lines: list[str] = []
    for name, kind, help_text in _FAMILIES:
        metric = f"{PREFIX}_{name}"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for labels, (by_status, latency, batches) in copies:
            if name == "requests_total":
                for status, n in sorted(by_status.items()):
                    extra = _join(labels, f'status="{status}"')
                    lines.append(f"{metric}{{{extra}}} {n}")
            elif name == "errors_total":
                errors = sum(n for s, n in by_status.items() if s >= 400)
                lines.append(f"{metric}{{{labels}}} {errors}")
            else:
                lines += _histogram_lines(metric, labels, latency if "latency" in name else batches)
    return "\n".join(lines) + "\n"


def _histogram_lines(metric: str, labels: str, hist: Histogram) -> list[str]:
    lines, running = [], 0
    for bound, n in zip([*hist.bounds, float("inf")], hist.counts, strict=True):
        running += n
        le = "+Inf" if bound == float("inf") else _number(bound)
        extra = _join(labels, f'le="{le}"')
        lines.append(f"{metric}_bucket{{{extra}}} {running}")
    lines.append(f"{metric}_sum{{{labels}}} {_number(hist.sum)}")
    lines.append(f"{metric}_count{{{labels}}} {hist.count}")
    return lines


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))


def _join(labels: str, extra: str) -> str:
    return f"{labels},{extra}" if labels else extra


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))
