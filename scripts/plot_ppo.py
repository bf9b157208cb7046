#!/usr/bin/python3
"""Plots a PPO run (hh-ppo's metrics.jsonl): PM reward against sqrt(KL) with a straight-line
fit, the paper's robustness finding (Bai et al. 2022, fig. 4: reward is roughly linear in
sqrt(D_KL(pi || pi_0))), and reward / KL / beta against the iteration.

    /usr/bin/python3 scripts/plot_ppo.py runs/ppo [out.png] [--skip N]

Prints the fit reward = a + b*sqrt(KL) and its R^2; the last line is one JSON object.
--skip N drops the first N iterations from the fit (the first one has KL = 0 by
construction).
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"plot_ppo.py: {path}:{n}: not JSON ({e})")
            if "reward" in rec and "sqrt_kl" in rec and not rec.get("skipped", False):
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


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--skip")]
    skip = 0
    for i, a in enumerate(sys.argv):
        if a.startswith("--skip="):
            skip = int(a.split("=", 1)[1])
        elif a == "--skip" and i + 1 < len(sys.argv):
            skip = int(sys.argv[i + 1])
            args.remove(sys.argv[i + 1])
    if not args:
        sys.exit(__doc__)
    run = args[0]
    out = args[1] if len(args) > 1 else os.path.join(run if os.path.isdir(run) else ".", "ppo.png")
    rows = read_metrics(run)
    if len(rows) < 3:
        sys.exit(f"plot_ppo.py: {run}: need at least 3 logged iterations, found {len(rows)}")
    steps = [r["step"] for r in rows]
    reward = [r["reward"] for r in rows]
    kl = [r["kl"] for r in rows]
    sqrt_kl = [r["sqrt_kl"] for r in rows]
    fit = rows[skip:]
    a, b, r2 = line_fit([r["sqrt_kl"] for r in fit], [r["reward"] for r in fit])

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
    if "beta" in rows[0]:
        twin = ax[2].twinx()
        twin.plot(steps, [r["beta"] for r in rows], "k--", label="β")
        twin.set_ylabel("β")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"{len(rows)} iterations ({len(fit)} in the fit): reward = {a:.4f} + {b:.4f}*sqrt(KL), "
          f"R^2 = {r2:.4f}; wrote {out}")
    print(json.dumps({"iterations": len(rows), "fit_points": len(fit), "intercept": a, "slope": b,
                      "r2": r2, "png": out}))


if __name__ == "__main__":
    main()
