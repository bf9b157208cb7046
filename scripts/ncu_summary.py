#!/usr/bin/env python3
"""Per-kernel GPU time from an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum).

Usage: ncu_summary.py FILE.csv [TOP]   prints the TOP (default 15) kernels by total time:
calls, total ms, share of the profiled total, mean us. Kernel names are shortened to the
function name (templates and arguments dropped) so launches of one kernel add up.
"""
import csv
import re
import sys
from collections import defaultdict


def short(name):
    name = re.sub(r"\(.*", "", name)       # arguments
    depth, out = 0, []
    for ch in name:                          # template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    name = re.sub(r"^(void|static)\s+", "", name)
    return name[-70:]


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are unquoted
    total = defaultdict(float)
    calls = defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        ns = value * {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(unit, 1)
        k = short(row["Kernel Name"])
        total[k] += ns
        calls[k] += 1
    grand = sum(total.values())
    if not grand:
        print(f"ncu_summary: no gpu__time_duration rows in {path}")
        return 1
    print(f"{'kernel':70s} {'calls':>6s} {'ms':>9s} {'share':>6s} {'mean us':>8s}")
    for k, ns in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{k:70s} {calls[k]:6d} {ns / 1e6:9.3f} {100 * ns / grand:5.1f}% {ns / calls[k] / 1e3:8.1f}")
    print(f"{'all kernels':70s} {sum(calls.values()):6d} {grand / 1e6:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
