"""What ``underlay demo`` must print: checked on the README tour's run of ``make demo``
(tests/cli/test_readme_tour.py), so the suite runs the demo once."""

from __future__ import annotations

import os
import re


def assert_the_demo_ran(stdout: str) -> None:
    """Every step of the demo said what it did (data, ML lifecycle, serving, retraining and
    the dashboard), with no traceback."""
    assert "demo complete" in stdout
    assert "Traceback" not in stdout
    assert "audit chain OK" in stdout
    wanted = "jobs run sandboxed (namespaces+user)" if os.geteuid() == 0 else "jobs "
    assert wanted in stdout  # the demo says how its node isolates jobs
    flat = " ".join(stdout.split())
    assert "(1 added, 1 removed, 1 changed); only 2 new file(s) were uploaded and stored" in flat
    assert "table orders@0: 1,998 rows written, 2 quarantined in orders_quarantine" in flat
    assert "reading a server file through SQL is refused" in flat
    # the customer table's PII findings: column, type, policy and a masked value
    assert "email: email -> tokenize (by default); stored as 'tok_email_" in flat
    assert "name: person -> tokenize (by default); stored as 'tok_person_" in flat
    assert "phone: phone -> partial; stored as '+** ** **** " in flat
    assert (
        "birth_date: date_of_birth -> tokenize (by default); stored as 'tok_date_of_birth_" in flat
    )
    assert "no raw name, email, phone number or birth date reached the table's files" in flat
    assert "customer_accounts@1 rejected (published: False): unique:id, allowed:country" in flat
    assert "readers still see customer_accounts@0" in flat
    assert "the fixed batch passes: customer_accounts@3 published, 53 rows" in flat
    # the ML lifecycle: a tracked run, a signed registered model, its card and an int8 export
    assert "30 steps of loss and accuracy" in flat and "trained on orders@0" in flat
    assert "registered churn@1, signed (Ed25519 over a manifest of hashes)" in flat
    assert "its predictions match the trained model's: 100%" in flat
    assert "# Model card: churn version 1" in flat
    assert "onnx-int8" in flat and "exported churn-onnx@1:" in flat
    # serving: the champion deployed, answered through JSON and V2, a broken canary rolled back
    assert "deployed churn@champion (version 1, signature and files verified)" in flat
    assert re.search(r"JSON predict \(as `underlay predict`\): 4 records -> \[[01, ]+\]", flat)
    assert "Open Inference Protocol (KServe V2, as tritonclient speaks it): POST" in flat
    assert "/v2/models/churn-api/infer with input FP32[4, 2] -> output [" in flat
    assert "both agree with the registered model's own predictions" in flat
    assert "registered churn@2, signed: a retrain that expects a third feature" in flat
    failed = re.search(r"sent \d+ requests: \d+ answered by churn@1, (\d+) failed on churn@2", flat)
    assert failed and int(failed.group(1)) > 0
    assert "canary.start by alice try the retrain" in flat
    assert "rollback by canary-monitor automatic: canary failed" in flat
    assert (
        "canary rolled_back; traffic: stable churn@1 100%, canary churn@2 0%; "
        "the next 20 requests all answered by churn@1" in flat
    )
    assert "audit: deployment.rollback by canary-monitor (ok)" in flat
    assert "churn-api removed; its replica jobs drained and ended, none left running" in flat
    # the retraining loop: drift flagged and alerted, a run by itself, promoted after a canary
    assert re.search(r"drift check \d+: spend [0-9.]+ DRIFT", flat)
    assert "alert drift: deployment loyalty-api:" in flat
    assert "retrain run 1 triggered by itself" in flat
    assert re.search(r"evaluating registered challenger loyalty@2 from run \d+", flat)
    assert "promoted version 2 passed its canary and is promoted" in flat
    assert "loyalty-api: rolling to loyalty@2" in flat
    # the dashboard: how to keep the server up to browse it, and how to sign in
    assert re.search(
        r"dashboard: was at http://127.0.0.1:\d+/ while the demo ran; run underlay demo --serve "
        r".* sign in as alice with password \S+",
        flat,
    )
