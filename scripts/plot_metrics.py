#!/usr/bin/python3
"""Plot curves from an hh run's metrics.jsonl (one JSON object per line).

    scripts/plot_metrics.py RUN_DIR/metrics.jsonl --keys loss,val_loss --out loss.png

Each key is drawn against `step` (records without the key are skipped), so training
and evaluation records can share one file. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{lineno}: not JSON: {e}")
    return records


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="metrics.jsonl")
    ap.add_argument("--keys", required=True, help="comma-separated metric names")
    ap.add_argument("--x", default="step", help="x-axis key (default: step)")
    ap.add_argument("--out", required=True, help="output PNG")
    ap.add_argument("--title", default="")
    ap.add_argument("--logy", action="store_true")
    args = ap.parse_args()

    records = read_metrics(args.metrics)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for key in args.keys.split(","):
        pts = [(r[args.x], r[key]) for r in records
               if args.x in r and isinstance(r.get(key), (int, float))]
        if not pts:
            print(f"warning: no '{key}' in {args.metrics}", file=sys.stderr)
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=key, marker="." if len(xs) < 60 else None)
        drawn += 1
    if drawn == 0:
        sys.exit(f"{args.metrics}: none of {args.keys} found")
    ax.set_xlabel(args.x)
    if args.logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title or args.metrics)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
