"""The idle-lane A/B of 2026-12-06 on the loaded shared machine (docs/scoring.md, "The idle lane"): medians of
the per-round ratios per configuration, from the score_bench JSON files here (rNN-X.json: iteration NN,
configuration X). Run: python benchmarks/results/lane-ab-2026-12-06/summarize.py [FIRST LAST] (iterations;
the loaded table of docs/scoring.md is 10 14, the quieter A/C/B runs 20 21)."""

import collections
import glob
import json
import os
import re
import statistics
import sys

HEADER = "| config | pairs | p99 with/without | p50 | req/s | real-time alone req/s | job share | job rows/s mixed/alone |"  # noqa: E501


def ratios(path: str) -> list[tuple[float, ...]]:
    r = json.load(open(path))
    alone = r["alone_served"]["rows_per_s"]
    out: list[tuple[float, ...]] = []
    for entry in r["rounds"]:
        a = entry["realtime_alone"]
        for cell in entry["mixed"]:
            x = cell["realtime"]
            out.append((x["p99_ms"] / a["p99_ms"], cell["batch_rows_per_s"] / alone, x["p50_ms"] / a["p50_ms"],
                        x["throughput"] / a["throughput"], a["throughput"], cell["batch_rows_per_s"], alone))
    return out


def line(cfg: str, rs: list[tuple[float, ...]]) -> str:
    med = [statistics.median(x[i] for x in rs) for i in range(7)]
    rng = [f"{min(x[i] for x in rs):.2f}-{max(x[i] for x in rs):.2f}" for i in range(7)]
    return (f"| {cfg} | {len(rs)} | {med[0]:.2f}x ({rng[0]}) | {med[2]:.2f}x | {med[3]:.2f}x | {med[4]:,.0f} | "
            f"{med[1]:.2f}x ({rng[1]}) | {med[5]:,.0f} / {med[6]:,.0f} |")


rows: dict[str, list[tuple[float, ...]]] = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r*-*.json"))):
    found = re.search(r"r(\d+)-(\w+)\.json$", path)
    first, last = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (0, 99)
    if found and first <= int(found.group(1)) <= last:
        rows[found.group(2)] += ratios(path)
print(HEADER)
for cfg, rs in sorted(rows.items()):
    print(line(cfg, rs))
