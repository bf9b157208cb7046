#!/usr/bin/python3
"""Plot a preference model's calibration: predicted P(preferred) against the observed
frequency, 10 bins, with the diagonal a calibrated model would follow.

Input: the JSON object hh-pm eval prints as its last line (or writes with --out), or the
eval.json that hh-pm train writes into its run directory; a file holding several lines
(e.g. the whole stdout of hh-pm eval) is read from its last JSON line.

Usage: /usr/bin/python3 scripts/plot_calibration.py EVAL_JSON [OUT_PNG=calibration.png]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_eval(path):
    """The last line of the file that parses as a JSON object with a calibration table."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "calibration" in obj:
            return obj
    sys.exit("%s: no JSON line with a \"calibration\" table (hh-pm eval's last line)" % path)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    ev = read_eval(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else "calibration.png"
    bins = [b for b in ev["calibration"] if b["count"] > 0]
    pred = [b["mean_predicted"] for b in bins]
    obs = [b["observed"] for b in bins]
    counts = [b["count"] for b in bins]
    total = sum(counts)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    sizes = [20 + 300 * c / total for c in counts]
    ax.plot(pred, obs, color="C0", linewidth=1)
    ax.scatter(pred, obs, s=sizes, color="C0", zorder=3, label="bins (area ~ count)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability  sigmoid(r_A - r_B)")
    ax.set_ylabel("observed frequency A preferred")
    title = "PM calibration: acc %.3f, ECE %.3f, %d pairs" % (
        ev.get("accuracy", float("nan")), ev.get("ece", float("nan")), ev.get("pairs", 0))
    ax.set_title(title, fontsize=10)
    if "baseline_shorter" in ev:
        ax.text(0.02, 0.95, "shorter-response baseline: %.3f" % ev["baseline_shorter"],
                transform=ax.transAxes, fontsize=8, va="top")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print("wrote %s" % out)


if __name__ == "__main__":
    main()
