"""Reading files for ingest (underlay.data.ingest), without a server: big-file behaviour."""

from __future__ import annotations

import random
from pathlib import Path

from underlay.data import ingest


def test_quarantined_lines_keep_their_numbers_across_batches(tmp_path: Path) -> None:
    """Bad lines anywhere in a file many batches long are reported on their own line (the
    header is line 1), and every good row loads."""
    rng = random.Random(3)
    # physical line numbers: short lines (read errors) and values that are no number
    # (conversion errors), some in runs, some at the first and last line
    bad_lines = {2, 3, 9001, *rng.sample(range(4, 9000), 400)}
    lines, good = ["id,v"], 0
    for line in range(2, 9002):
        if line in bad_lines:
            lines.append(f"{line},not-a-number" if line % 2 else f"{line}")
        else:
            lines.append(f"{line},{line * 2}")
            good += 1
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    source = ingest.open_source(path, "csv", None, batch_rows=1024)
    rows = sum(batch.num_rows for batch in source.batches)
    assert rows == good
    rejected = source.quarantine.table("t.csv").to_pylist()
    assert sorted(r["line"] for r in rejected) == sorted(bad_lines)
    assert all(r["raw"].startswith(f"{r['line']}") for r in rejected)
