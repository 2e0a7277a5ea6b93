"""Run addresses are stable: the results-store hash of every (preset, task, method, seed) and of
a few ``--set`` variants equals the golden table taken before the plug-in refactor (issue 11), so
existing results folders stay valid.

``tests/data/golden_hashes.csv`` was produced by ``plan_runs`` at commit 517ece3 for every
registered method (teachers and the ``mixture`` reference included), every task, every preset,
seeds 0 and 1, and the override sets in its ``set`` column. A hash that must change needs a
bumped store version (``benchmark.CODE_VERSION``) and a migration, not an edit of this table.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from benchmark.config import parse_overrides
from benchmark.runner import plan_runs

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_hashes.csv"


def _golden() -> dict[tuple[str, str, str], dict[tuple[str, int], str]]:
    table: dict[tuple[str, str, str], dict[tuple[str, int], str]] = defaultdict(dict)
    with GOLDEN.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["preset"], row["task"], row["set"])
            table[key][(row["method"], int(row["seed"]))] = row["hash"]
    return table


def test_every_run_address_matches_the_golden_table(tmp_path):
    golden = _golden()
    assert len(golden) > 100  # every preset x task x override set
    mismatches = []
    for (preset, task, variant), expected in golden.items():
        methods = sorted({m for m, _ in expected if m != "mixture"})
        overrides = parse_overrides(variant.split())
        runs = plan_runs(methods, task, [0, 1], preset, overrides, tmp_path)
        got = {(r.config.method, r.config.seed): r.run_hash for r in runs}
        assert set(got) == set(expected), (preset, task, variant)
        for key, hash_ in expected.items():
            if got[key] != hash_:
                mismatches.append(f"{preset}/{task}/{key[0]} seed {key[1]} [{variant}]")
    assert not mismatches, f"{len(mismatches)} run addresses changed: {mismatches[:10]}"
