#!/usr/bin/python3
"""Plot curves from an hh run's metrics.jsonl (one JSON object per line).

    scripts/plot_metrics.py RUN_DIR/metrics.jsonl --keys loss,val_loss --out loss.png

Each key is drawn against `step` (records without the key are skipped), so training
and evaluation records can share one file. Lines that are not JSON objects, and records
whose value or step is not a finite number, are skipped with a warning (file:line).
Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse

from plot_common import check_out, fail, number, pyplot, read_jsonl, savefig, warn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="metrics.jsonl")
    ap.add_argument("--keys", required=True, help="comma-separated metric names")
    ap.add_argument("--x", default="step", help="x-axis key (default: step)")
    ap.add_argument("--out", required=True, help="output image (.png, .pdf, .svg, ...)")
    ap.add_argument("--title", default="")
    ap.add_argument("--logy", action="store_true")
    args = ap.parse_args()
    keys = [k for k in args.keys.split(",") if k]
    if not keys:
        ap.error("--keys: no metric names")
    check_out(args.out)

    records = read_jsonl(args.metrics)
    curves = []
    for key in keys:
        pts = []
        for n, r in records:
            if key not in r:
                continue
            x, y = number(r.get(args.x)), number(r[key])
            if y is None:
                warn(f"{args.metrics}:{n}: '{key}' is not a finite number, skipped")
            elif x is None:
                warn(f"{args.metrics}:{n}: '{key}' without a finite '{args.x}', skipped")
            else:
                pts.append((x, y))
        if pts:
            curves.append((key, pts))
        else:
            warn(f"no '{key}' in {args.metrics}")
    if not curves:
        fail(f"{args.metrics}: none of {args.keys} found")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, pts in curves:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=key, marker="." if len(xs) < 60 else None)
    ax.set_xlabel(args.x)
    if args.logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title or args.metrics)
    fig.tight_layout()
    savefig(fig, args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
