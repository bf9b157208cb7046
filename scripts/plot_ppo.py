#!/usr/bin/python3
"""Plots a PPO run (hh-ppo's metrics.jsonl): PM reward against sqrt(KL) with a straight-line
fit, the paper's robustness finding (Bai et al. 2022, fig. 4: reward is roughly linear in
sqrt(D_KL(pi || pi_0))), and reward / KL / beta against the iteration.

    /usr/bin/python3 scripts/plot_ppo.py runs/ppo [out.png] [--skip N]
        [--bon bon.txt] [--compare compare.txt]

Prints the fit reward = a + b*sqrt(KL) and its R^2; the last line is one JSON object.
--skip N drops the first N iterations from the fit (the first one has KL = 0 by
construction).

The paper's comparison of RLHF with best-of-N (Bai et al. 2022, sec. 4.3) on the same
axes: --bon takes hh-eval bon's output for the initial policy (its best-of-k curve, PM
score against sqrt(log k - (k-1)/k)), --compare hh-eval compare's output for the PPO
policy (A) against it (--reference the initial policy), a point at A's held-out reward
and sqrt(KL). With both, the JSON line adds the best-of-N score interpolated at A's
sqrt(KL) ("bon_at_policy_kl"; null beyond the curve).
"""
import argparse
import json
import math
import os

from plot_common import (check_out, fail, json_safe, number, pyplot, read_jsonl, read_last_object,
                         savefig, warn)

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


def read_bon(path):
    """hh-eval bon's best-of-k curve as [(k, sqrt_kl, mean PM score)], k ascending."""
    n, obj = read_last_object(path, "curve", "hh-eval bon's last line", lenient=True)
    curve, where = obj["curve"], f"{path}:{n}: \"curve\""
    if not isinstance(curve, list) or not curve:
        fail(f"{where} is not a non-empty list")
    points = []
    for i, p in enumerate(curve):
        p = p if isinstance(p, dict) else {}
        k, x, y = p.get("n"), number(p.get("sqrt_kl")), number(p.get("mean_best"))
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or x is None or y is None:
            fail(f"{where}: point {i} needs n >= 1 and finite mean_best and sqrt_kl (sqrt_kl is "
                 "null when the samples are not the policy's: sample with temperature 1)")
        points.append((k, x, y))
    return sorted(points)


def read_compare(path):
    """(sqrt(KL), mean PM reward) of hh-eval compare's policy A on held-out prompts."""
    n, obj = read_last_object(path, "reward_a", "hh-eval compare's last line", lenient=True)
    kl, reward = number(obj.get("kl_a")), number(obj.get("reward_a"))
    if kl is None or reward is None:
        fail(f"{path}:{n}: needs finite reward_a and kl_a (run hh-eval compare with --reference)")
    return math.sqrt(max(kl, 0.0)), reward  # a Monte Carlo KL can come out just below 0


def interpolate(points, x):
    """The curve's score at sqrt_kl = x (linear between points), None beyond its ends."""
    for (_, x0, y0), (_, x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][2] if len(points) == 1 and x == points[0][1] else None


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
    ap.add_argument("--bon", metavar="FILE", help="hh-eval bon's output for the initial policy")
    ap.add_argument("--compare", metavar="FILE",
                    help="hh-eval compare's output, A = the PPO policy, --reference the initial one")
    args = ap.parse_intermixed_args()
    run, skip = args.run, args.skip
    out = args.out or os.path.join(run if os.path.isdir(run) else ".", "ppo.png")
    check_out(out)
    bon = read_bon(args.bon) if args.bon else None
    held_out = read_compare(args.compare) if args.compare else None
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
    if bon:
        ax[0].plot([p[1] for p in bon], [p[2] for p in bon], "s--", color="darkorange",
                   label="best-of-N, initial policy (held-out)")
        for k, x, y in bon:
            ax[0].annotate(f"N={k}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if held_out:
        ax[0].plot([held_out[0]], [held_out[1]], "r*", markersize=14, label="PPO policy (held-out)")
    ax[0].set_xlabel("√KL(π‖π₀)  (nats, per response)")
    ax[0].set_ylabel("mean PM reward")
    ax[0].set_title("reward vs √KL")
    ax[0].legend(fontsize=8, loc="upper left")
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
    summary = {"iterations": len(rows), "fit_points": len(fit), "intercept": json_safe(a),
               "slope": json_safe(b), "r2": json_safe(r2), "png": out}
    if bon:
        summary["bon"] = [{"n": k, "sqrt_kl": x, "mean_best": y} for k, x, y in bon]
        print("best-of-N (held-out): " + ", ".join(f"N={k} {y:+.4f} at sqrt(KL) {x:.3f}" for k, x, y in bon))
    if held_out:
        summary["policy_sqrt_kl"], summary["policy_reward"] = held_out
        line = f"PPO policy (held-out): {held_out[1]:+.4f} at sqrt(KL) {held_out[0]:.3f}"
        if bon:
            summary["bon_at_policy_kl"] = interpolate(bon, held_out[0])
            there = summary["bon_at_policy_kl"]
            line += "; best-of-N there: " + ("beyond the curve" if there is None else f"{there:+.4f}")
        print(line)
    # The last line is JSON: an undefined value (r2 when the fitted rewards are all equal) is null.
    print(json.dumps(summary, allow_nan=False))


if __name__ == "__main__":
    main()
