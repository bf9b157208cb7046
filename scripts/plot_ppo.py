#!/usr/bin/python3
"""Plots a PPO run (hh-ppo's metrics.jsonl): PM reward against sqrt(KL) with a straight-line
fit, the paper's robustness finding (Bai et al. 2022, fig. 4: reward is roughly linear in
sqrt(D_KL(pi || pi_0))), and reward / KL / beta against the iteration.

    /usr/bin/python3 scripts/plot_ppo.py runs/ppo [out.png] [--skip N]

Prints the fit reward = a + b*sqrt(KL) and its R^2; the last line is one JSON object.
--skip N drops the first N iterations from the fit (the first one has KL = 0 by
construction).
"""
import argparse
import json
import os

from plot_common import check_out, fail, json_safe, number, pyplot, read_jsonl, savefig, warn

REQUIRED = ("step", "reward", "kl", "sqrt_kl")


def read_metrics(path):
    """The logged iterations (records with reward and sqrt_kl, not skipped) in step order;
    records with a required field missing or not a finite number are skipped with a warning."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    for n, rec in read_jsonl(path):
        if "reward" not in rec or "sqrt_kl" not in rec or rec.get("skipped", False):
            continue
        bad = [k for k in REQUIRED if number(rec.get(k)) is None]
        if bad:
            warn(f"{path}:{n}: {', '.join(bad)} missing or not a finite number, skipped")
            continue
        rows.append(rec)
    # A resumed run appends: keep the last record of each step.
    by_step = {r["step"]: r for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def line_fit(xs, ys):
    """Least squares y = a + b x; returns a, b, R^2 (1 - SS_res / SS_tot)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx > 0 else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return a, b, r2


def skip_count(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="hh-ppo run directory, or its metrics.jsonl")
    ap.add_argument("out", nargs="?", help="output image (default: RUN/ppo.png, or ./ppo.png for a file)")
    ap.add_argument("--skip", type=skip_count, default=0, metavar="N",
                    help="drop the first N iterations (N >= 0) from the fit")
    args = ap.parse_intermixed_args()
    run, skip = args.run, args.skip
    out = args.out or os.path.join(run if os.path.isdir(run) else ".", "ppo.png")
    check_out(out)
    rows = read_metrics(run)
    if len(rows) < 3:
        fail(f"{run}: need at least 3 logged iterations, found {len(rows)}")
    if len(rows) - skip < 2:
        fail(f"--skip {skip} leaves {max(0, len(rows) - skip)} of {len(rows)} iterations for the fit, "
             "which needs at least 2")
    steps = [r["step"] for r in rows]
    reward = [r["reward"] for r in rows]
    kl = [r["kl"] for r in rows]
    sqrt_kl = [r["sqrt_kl"] for r in rows]
    fit = rows[skip:]
    a, b, r2 = line_fit([r["sqrt_kl"] for r in fit], [r["reward"] for r in fit])

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    sc = ax[0].scatter(sqrt_kl, reward, c=steps, cmap="viridis", s=18)
    xs = [min(sqrt_kl), max(sqrt_kl)]
    ax[0].plot(xs, [a + b * x for x in xs], "r-", label=f"{a:.3f} + {b:.3f}·√KL  (R²={r2:.3f})")
    ax[0].set_xlabel("√KL(π‖π₀)  (nats, per response)")
    ax[0].set_ylabel("mean PM reward")
    ax[0].set_title("reward vs √KL")
    ax[0].legend(fontsize=8)
    fig.colorbar(sc, ax=ax[0], label="iteration")
    ax[1].plot(steps, reward, "b.-")
    ax[1].set_xlabel("iteration")
    ax[1].set_ylabel("mean PM reward")
    ax[1].set_title("reward")
    ax[2].plot(steps, kl, "g.-", label="KL")
    ax[2].set_xlabel("iteration")
    ax[2].set_ylabel("KL (nats per response)")
    ax[2].set_title("KL to π₀ and β")
    beta = [(r["step"], r["beta"]) for r in rows if number(r.get("beta")) is not None]
    if beta:
        twin = ax[2].twinx()
        twin.plot(*zip(*beta), "k--", label="β")
        twin.set_ylabel("β")
    fig.tight_layout()
    savefig(fig, out, dpi=110)
    print(f"{len(rows)} iterations ({len(fit)} in the fit): reward = {a:.4f} + {b:.4f}*sqrt(KL), "
          f"R^2 = {r2:.4f}; wrote {out}")
    # The last line is JSON: an undefined value (r2 when the fitted rewards are all equal) is null.
    print(json.dumps({"iterations": len(rows), "fit_points": len(fit), "intercept": json_safe(a),
                      "slope": json_safe(b), "r2": json_safe(r2), "png": out}, allow_nan=False))


if __name__ == "__main__":
    main()
