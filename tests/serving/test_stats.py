"""Per-deployment counters: the snapshot and the Prometheus text exposition."""

from __future__ import annotations

import re

from underlay.serving.stats import DeploymentStats, prometheus_text

SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def _samples(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not an exposition sample: {line!r}"
        out[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return out


def _filled() -> DeploymentStats:
    stats = DeploymentStats()
    for latency in (0.0004, 0.0008, 0.002, 0.003, 0.2):
        stats.observe_request(latency, 200)
    stats.observe_request(0.001, 400)
    stats.observe_request(0.05, 503)
    for rows in (1, 3, 32, 40):
        stats.observe_batch(rows)
    return stats


def test_the_snapshot_counts_requests_errors_latency_and_batches() -> None:
    snap = _filled().snapshot()
    assert snap["requests"] == 7
    assert (snap["errors"], snap["server_errors"]) == (2, 1)
    assert snap["by_status"] == {"200": 5, "400": 1, "503": 1}
    latency = snap["latency_ms"]
    assert latency["count"] == 7
    assert 1.0 <= latency["p50"] <= 2.5  # the 4th of 7 lies in the (1, 2.5] ms bucket
    assert 100 <= latency["p99"] <= 250
    batches = snap["batches"]
    assert (batches["count"], batches["rows"], batches["mean_rows"]) == (4, 76, 19.0)
    assert batches["max_rows_bucket"] == 64
    empty = DeploymentStats().snapshot()
    assert empty["requests"] == 0 and empty["latency_ms"]["p50"] is None


def test_the_prometheus_exposition_has_cumulative_buckets_and_escaped_labels() -> None:
    text = _filled().prometheus({"project": "p", "deployment": 'we"ird\\name'})
    samples = _samples(text)
    labels = 'deployment="we\\"ird\\\\name",project="p"'
    assert samples[("underlay_serving_requests_total", labels + ',status="200"')] == 5
    assert samples[("underlay_serving_errors_total", labels)] == 2
    assert samples[("underlay_serving_request_latency_seconds_count", labels)] == 7
    bucket = "underlay_serving_request_latency_seconds_bucket"
    assert samples[(bucket, labels + ',le="0.001"')] == 3
    assert samples[(bucket, labels + ',le="+Inf"')] == 7
    assert samples[("underlay_serving_batch_rows_bucket", labels + ',le="32"')] == 3
    assert samples[("underlay_serving_batch_rows_sum", labels)] == 76
    counts = [v for (name, _), v in samples.items() if name == bucket]
    assert counts == sorted(counts)
    assert text.count("# TYPE underlay_serving_request_latency_seconds histogram") == 1


def test_several_deployments_share_one_declaration_per_family() -> None:
    text = prometheus_text([({"deployment": "a"}, _filled()), ({"deployment": "b"}, _filled())])
    assert text.count("# HELP underlay_serving_requests_total") == 1
    samples = _samples(text)
    assert samples[("underlay_serving_errors_total", 'deployment="a"')] == 2
    assert samples[("underlay_serving_errors_total", 'deployment="b"')] == 2
