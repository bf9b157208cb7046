#!/usr/bin/python3
"""Plot a preference model's calibration: predicted P(preferred) against the observed
frequency, 10 bins, with the diagonal a calibrated model would follow.

Input: the JSON object hh-pm eval prints as its last line (or writes with --out), or the
eval.json that hh-pm train writes into its run directory; a file holding several lines
(e.g. the whole stdout of hh-pm eval) is read from its last JSON line.

Usage: /usr/bin/python3 scripts/plot_calibration.py EVAL_JSON [OUT_PNG=calibration.png]
"""
import argparse

from plot_common import check_out, fail, number, pyplot, read_last_object, savefig, warn


def read_eval(path):
    """(line number, object) of the last JSON line with a calibration table."""
    return read_last_object(path, "calibration", "hh-pm eval's last line")


def read_bins(path, n, table):
    """The bins with count > 0 as (mean_predicted, observed, count); fails on a malformed bin."""
    where = "%s:%d: \"calibration\"" % (path, n)
    if not isinstance(table, list):
        fail("%s is not a list of bins" % where)
    bins = []
    for i, b in enumerate(table):
        if not isinstance(b, dict):
            fail("%s bin %d is not an object" % (where, i))
        count = number(b.get("count"))
        if count is None or count < 0:
            fail("%s bin %d: \"count\" is missing or not a number >= 0" % (where, i))
        if count == 0:
            continue
        pred, obs = number(b.get("mean_predicted")), number(b.get("observed"))
        if pred is None or obs is None:
            fail("%s bin %d: \"mean_predicted\" or \"observed\" is missing or not a finite number" % (where, i))
        bins.append((pred, obs, count))
    if not bins:
        fail("%s: no bin has a count > 0: nothing to plot" % where)
    return bins


def field(path, n, ev, key, fmt):
    """fmt % ev[key], or None (with a warning if the key is there but not a number)."""
    if key not in ev:
        return None
    v = number(ev[key])
    if v is None:
        warn("%s:%d: \"%s\" is not a finite number, left out" % (path, n, key))
        return None
    return fmt % v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_json", help="hh-pm eval output or a run's eval.json")
    ap.add_argument("out_png", nargs="?", default="calibration.png",
                    help="output image (default: calibration.png)")
    args = ap.parse_args()
    check_out(args.out_png)
    n, ev = read_eval(args.eval_json)
    bins = read_bins(args.eval_json, n, ev["calibration"])
    pred, obs, counts = zip(*bins)
    total = sum(counts)
    parts = [p for p in (field(args.eval_json, n, ev, "accuracy", "acc %.3f"),
                         field(args.eval_json, n, ev, "ece", "ECE %.3f"),
                         field(args.eval_json, n, ev, "pairs", "%d pairs")) if p]
    baseline = field(args.eval_json, n, ev, "baseline_shorter", "shorter-response baseline: %.3f")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    sizes = [20 + 300 * c / total for c in counts]
    ax.plot(pred, obs, color="C0", linewidth=1)
    ax.scatter(pred, obs, s=sizes, color="C0", zorder=3, label="bins (area ~ count)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability  sigmoid(r_A - r_B)")
    ax.set_ylabel("observed frequency A preferred")
    ax.set_title("PM calibration" + (": " + ", ".join(parts) if parts else ""), fontsize=10)
    if baseline:
        ax.text(0.02, 0.95, baseline, transform=ax.transAxes, fontsize=8, va="top")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    savefig(fig, args.out_png, dpi=120)
    print("wrote %s" % args.out_png)


if __name__ == "__main__":
    main()
