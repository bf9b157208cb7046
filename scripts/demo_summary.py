#!/usr/bin/python3
"""Print the results of a demo run (scripts/demo.sh): LM loss, PM accuracy and calibration,
PPO reward and KL over the run, PPO-vs-SFT win rate, and dialogues side by side.

    scripts/demo_summary.py runs/demo-cpu
"""
import json
import os
import sys


def last_json_line(path):
    """The last line of a file that parses as a JSON object."""
    with open(path, errors="replace") as f:
        lines = [l.strip() for l in f if l.strip().startswith("{")]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    sys.exit(f"{path}: no JSON summary line")


def metrics(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    p = lambda name: os.path.join(out, name)  # noqa: E731

    print("\n" + "=" * 78)
    print("hh demo results:", out)
    print("=" * 78)
    pre, sft = last_json_line(p("pretrain.json")), last_json_line(p("sft.json"))
    print(f"language model   held-out loss after pretraining {pre.get('val_loss', float('nan')):.4f}"
          f", after SFT (assistant tokens) {sft.get('val_loss', float('nan')):.4f}")

    pm = last_json_line(p("pm_eval.json"))
    print(f"preference model dev accuracy {pm['accuracy']:.3f} over {pm['pairs']} pairs "
          f"(prefer-the-shorter-response baseline {pm['baseline_shorter']:.3f}), "
          f"mean margin {pm['mean_margin']:.3f}, ECE {pm['ece']:.3f}")
    print("  calibration: predicted P(preferred) vs observed frequency")
    for b in pm.get("calibration", []):
        if b.get("count", 0):
            print(f"    [{b['lo']:.1f}, {b['hi']:.1f})  n={b['count']:4d}  predicted {b['mean_predicted']:.3f}"
                  f"  observed {b['observed']:.3f}")

    ppo = [r for r in metrics(p("ppo/metrics.jsonl")) if "reward" in r]
    if ppo:
        k = max(1, len(ppo) // 5)
        first, last = ppo[:k], ppo[-k:]
        mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        print(f"PPO              {len(ppo)} iterations; PM reward {mean(first, 'reward'):+.3f} -> "
              f"{mean(last, 'reward'):+.3f} (first/last {k}); KL to SFT {mean(first, 'kl'):.3f} -> "
              f"{mean(last, 'kl'):.3f} nats/response; beta {last[-1].get('beta', 0):.4g}")
    if os.path.exists(p("ppo_fit.txt")):  # the fit, best-of-N and the held-out point
        with open(p("ppo_fit.txt")) as f:
            for line in f:
                if line.strip() and not line.startswith("{"):
                    print("  " + line.rstrip())
    elif os.path.exists(p("bon.txt")):  # no plots (no matplotlib): the curve alone
        curve = last_json_line(p("bon.txt")).get("curve", [])
        print("  best-of-N from SFT (held-out): " + ", ".join(
            f"N={c['n']} {c['mean_best']:+.4f}" for c in curve))

    with open(p("compare.txt"), errors="replace") as f:
        text = f.read()
    cmp = last_json_line(p("compare.txt"))
    print(f"PPO vs SFT       win rate of PPO judged by the PM {cmp['win_rate_a']:.3f} "
          f"(hard wins {cmp.get('hard_win_rate_a', float('nan')):.3f}) over {cmp.get('prompts', '?')} held-out prompts;"
          f" mean PM reward PPO {cmp['reward_a']:+.3f}, SFT {cmp['reward_b']:+.3f}; KL(PPO||SFT) {cmp.get('kl_a', float('nan')):.3f}")
    print("\nSample dialogues (held-out prompts), PPO policy (A) and SFT policy (B):\n")
    print("\n".join(l for l in text.splitlines() if not l.startswith("{")))
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    if pngs:
        print("plots: " + ", ".join(os.path.join(out, f) for f in pngs))


if __name__ == "__main__":
    main()
