#!/usr/bin/env python
"""Merge interaction-benchmark reports of one setting run in parts (split by seed or by method, on several machines
or processes) into one report: the per-seed rows of every part (a later file's row wins for the same method,
mixture and seed), aggregated again into the mean ± std tables, the gate summary, the plain-peer gaps and the chart,
exactly as one run would have written them.

    python benchmarks/merge_reports.py bench_out/tva_s0.json bench_out/tva_s1.json bench_out/tva_s2.json \\
        --out benchmarks/results/real_tva.json

Every part must come from the same benchmark and setting (modalities, steps, data sizes); the settings that may
differ between parts are the seeds, the methods and how the run was split (`jobs`, `threads`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import aggregate, emit, gate_summary_names, plain_peer_gaps  # noqa: E402

# Settings that say how a part was run, not what was measured.
PER_PART_SETTINGS = {"seeds", "methods", "jobs", "threads"}


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several parts of the same setting."""
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    for report in reports[1:]:
        if report["benchmark"] != first["benchmark"]:
            raise ValueError(f"cannot merge {report['benchmark']!r} into {first['benchmark']!r}")
        differing = sorted(
            key for key in set(first["settings"]) | set(report["settings"])
            if key not in PER_PART_SETTINGS and first["settings"].get(key) != report["settings"].get(key)
        )
        if differing:
            raise ValueError(f"the parts differ in settings {differing}: they are not one setting")
    rows: dict[tuple, dict[str, Any]] = {}
    methods: dict[str, Any] = {}
    chance: dict[str, list[float]] = {}
    for report in reports:
        methods.update(report["methods"])
        for row in report["per_seed"]:
            rows[(row["method"], row["mixture"], row["seed"])] = row
        for mixture, value in report["synergy_indicator_chance"].items():
            # One chance level per (mixture, seed): a part's value is its seeds' mean.
            seeds = {row["seed"] for row in report["per_seed"] if row["mixture"] == mixture}
            chance.setdefault(mixture, []).extend([value] * len(seeds))
    per_seed = sorted(rows.values(), key=lambda r: (r["mixture"], r["seed"], list(methods).index(r["method"])))
    mixtures = list(dict.fromkeys(row["mixture"] for row in per_seed))
    aggregated = aggregate(per_seed, list(methods), mixtures)
    seeds = sorted({row["seed"] for row in per_seed})
    modalities = [c.removeprefix("uniqueness_") for c in first["components"] if c.startswith("uniqueness_")]
    return {
        **first,
        "settings": {**first["settings"], "seeds": seeds, "methods": list(methods)},
        "methods": methods,
        "gate_summary": gate_summary_names(first["interaction_types"][mixtures[0]], modalities),
        "rows": aggregated,
        "plain_peer_gaps": plain_peer_gaps(aggregated),
        "synergy_indicator_chance": {m: sum(v) / len(v) for m, v in chance.items()},
        "per_seed": per_seed,
        "wall_time_s": round(sum(report["wall_time_s"] for report in reports), 1),
        "merged_from": len(reports),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="the parts' JSON reports")
    parser.add_argument("--out", help="write the merged JSON here (and the chart next to it as .png)")
    args = parser.parse_args(argv)
    report = merge([json.loads(Path(path).read_text()) for path in args.reports])
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
