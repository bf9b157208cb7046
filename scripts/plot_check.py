#!/usr/bin/python3
"""Check scripts/plot_metrics.py, plot_calibration.py and plot_ppo.py on small good and bad
inputs built in a temp dir: good inputs give images and the usual last line ("wrote X", or
plot_ppo's JSON object); bad ones a clear error (exit 1: one line on stderr naming the file,
and file:line for JSONL lines) or a usage error (exit 2), never a traceback; malformed
JSONL lines are skipped with a file:line warning. Exit 77 (skip) without matplotlib.

    /usr/bin/python3 scripts/plot_check.py
"""
import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
PPO_KEYS = ["iterations", "fit_points", "intercept", "slope", "r2", "png"]


def ppo_rec(step, skl, reward=None, **kw):
    rec = {"step": step, "kl": skl * skl, "sqrt_kl": skl, "beta": 0.1,
           "reward": 1 + 2 * skl if reward is None else reward, "skipped": False}
    rec.update(kw)
    return rec


def bon_point(k, score):
    """A point of hh-eval bon's curve: KL = log k - (k-1)/k."""
    return {"n": k, "mean_best": score, "sqrt_kl": math.sqrt(math.log(k) - (k - 1) / k)}


def jsonl(*lines):
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def build(d):
    """Input files under d; returns their paths."""
    def put(name, content):
        path = os.path.join(d, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        return path

    good_bins = [{"lo": k / 10, "hi": (k + 1) / 10, "count": 0 if k in (0, 9) else 10 + k,
                  "mean_predicted": k / 10 + 0.05 if k not in (0, 9) else 0, "observed": k / 10 + 0.04}
                 for k in range(10)]
    ev = {"accuracy": 0.6, "baseline_shorter": 0.55, "calibration": good_bins, "ece": 0.05, "pairs": 100}

    def ev_with(**kw):
        return json.dumps(dict(ev, **kw)) + "\n"

    no_count = [dict(b) for b in good_bins]
    del no_count[1]["count"]
    nan_pred = [dict(b) for b in good_bins]
    nan_pred[2]["mean_predicted"] = float("nan")
    good_ppo = [ppo_rec(s, 0.3 * s) for s in range(1, 7)]
    return {
        "metrics": put("m/metrics.jsonl", jsonl(
            {"step": 1, "loss": 3.0}, "", {"step": 2, "loss": 2.5}, {"step": 2, "val_loss": 2.7},
            {"step": 3, "loss": 2.2}, {"step": 4, "val_loss": 2.4})),
        "metrics_bad": put("m/bad.jsonl", jsonl(
            {"step": 1, "loss": 3.0}, "{not json", "5", {"loss": 2.0}, {"step": 3, "loss": "x"},
            '{"step": 4, "loss": NaN}', {"step": 5, "loss": 2.1})),
        "metrics_junk": put("m/junk.jsonl", jsonl("{not json", "[1, 2]", {"step": 1, "loss": None})),
        "binary": put("bin/model.bin", bytes(range(256)) * 4),
        "nul": put("bin/nul.jsonl", b'{"step": 1}\n\0\0\0\n'),
        "eval": put("c/eval.txt", "hh-pm eval: 100 pairs\n" + json.dumps({"other": 1}) + "\n"
                    + json.dumps(ev) + "\nnot json at the end\n"),
        "eval_no_count": put("c/no_count.json", ev_with(calibration=no_count)),
        "eval_cal5": put("c/cal5.json", ev_with(calibration=5)),
        "eval_str_acc": put("c/str_acc.json", ev_with(accuracy="high")),
        "eval_empty": put("c/empty_bins.json", ev_with(calibration=[dict(b, count=0) for b in good_bins])),
        "eval_nan": put("c/nan.json", json.dumps(dict(ev, calibration=nan_pred)) + "\n"),
        "eval_none": put("c/none.json", jsonl({"accuracy": 0.5}, "text")),
        "ppo": put("ppo/metrics.jsonl", jsonl(
            *good_ppo[:3], {"step": 99, "loss": 1.0}, ppo_rec(50, 9.0, reward=100, skipped=True),
            ppo_rec(4, 5.0, reward=-7), *good_ppo[3:])),  # step 4 twice (a resumed run): the last counts
        "ppo_bad": put("ppo_bad/metrics.jsonl", jsonl(
            *good_ppo[:2], "5", "{oops", {k: v for k, v in ppo_rec(7, 1.0).items() if k != "step"},
            ppo_rec(8, float("nan")), ppo_rec(9, 1.0, reward=float("inf")), ppo_rec(10, 1.0, kl="x"),
            *good_ppo[2:5])),
        "ppo_flat": put("ppo_flat/metrics.jsonl", jsonl(*[ppo_rec(s, 0.1 * s, reward=0.5) for s in range(1, 6)])),
        "ppo_junk": put("ppo_junk/metrics.jsonl", jsonl("5", "[]", ppo_rec(1, 0.0), {"reward": 1, "sqrt_kl": 0})),
        "ppo_empty_dir": os.path.dirname(put("ppo_none/other.txt", "")),
        "bon": put("e/bon.txt", "[0] best score +1.5: caf\xe9\n".encode("latin-1") + (jsonl(
            {"other": 1}, {"n": 4, "curve": [bon_point(1, 1.0), bon_point(2, 1.2), bon_point(4, 1.5)]})
            + "table\n").encode()),
        "bon_nokl": put("e/bon_nokl.txt", jsonl({"n": 2, "curve": [
            {"n": 1, "mean_best": 1.0, "sqrt_kl": None}, {"n": 2, "mean_best": 1.1, "sqrt_kl": None}]})),
        "compare": put("e/compare.txt", "  A: \xff\n".encode("latin-1") + jsonl(
            {"reward_a": 1.3, "reward_b": 1.0, "kl_a": 0.09, "kl_b": 0.0}).encode()),
        "compare_nokl": put("e/compare_nokl.txt", jsonl({"reward_a": 1.3, "reward_b": 1.0})),
        "missing": os.path.join(d, "no_such_dir", "metrics.jsonl"),
        "nodir_png": os.path.join(d, "no_such_dir", "x.png"),
    }


def cases(p, d):
    """(name, script, args, exit code, strings the last stderr line must hold, check of the run)."""
    M, C, P = "plot_metrics.py", "plot_calibration.py", "plot_ppo.py"

    def out(name):
        return os.path.join(d, "out", name)

    def wrote(path):  # plot_metrics' and plot_calibration's last line, and the image
        return lambda r: r.stdout.splitlines()[-1] == "wrote " + path and os.path.getsize(path) > 0

    mk = ["--keys", "loss,val_loss", "--out"]
    cs = []
    for s, good in ((M, [p["metrics"]] + mk + [out("x.png")]), (C, [p["eval"], out("x.png")]),
                    (P, [os.path.join(d, "ppo"), out("x.png")])):
        extra = ["--bogus"] if s != C else [out("y.png"), "extra"]
        cs += [
            (s + " --help", s, ["--help"], 0, [], lambda r: "usage:" in r.stdout),
            (s + " extra/unknown args", s, good + extra, 2, ["unrecognized arguments"], None),
            (s + " missing input", s, [p["missing"]] + good[1:], 1, [p["missing"], "No such file"], None),
            (s + " binary input", s, [p["binary"]] + good[1:], 1, [p["binary"], "not a UTF-8 text file"], None),
            (s + " NUL bytes", s, [p["nul"]] + good[1:], 1, [p["nul"], "binary file"], None),
            (s + " output dir missing", s, good[:-1] + [p["nodir_png"]], 1, [p["nodir_png"], "does not exist"], None),
            (s + " output .jsonl", s, good[:-1] + [p["metrics"]], 1, [p["metrics"], "image extension"],
             lambda r: open(p["metrics"]).read().startswith('{"step": 1')),
        ]
        if s != P:  # plot_ppo takes a directory (tested below)
            cs.append((s + " directory input", s, [d] + good[1:], 1, [d, "Is a directory"], None))

    cs += [
        ("metrics good", M, [p["metrics"]] + mk + [out("m.png"), "--title", "t", "--logy"], 0, [], wrote(out("m.png"))),
        ("metrics malformed lines skipped, .svg", M, [p["metrics_bad"]] + mk + [out("mb.svg")], 0,
         ["no 'val_loss'"], lambda r: wrote(out("mb.svg"))(r) and all(
             f"bad.jsonl:{n}:" in r.stderr for n in (2, 3, 4, 5, 6))),
        ("metrics nothing usable", M, [p["metrics_junk"]] + mk + [out("mj.png")], 1, ["junk.jsonl", "none of"],
         lambda r: "junk.jsonl:2: not a JSON object" in r.stderr and not os.path.exists(out("mj.png"))),
        ("metrics output without extension", M, [p["metrics"]] + mk + [out("plot")], 1, ["image extension"], None),
        ("metrics --keys missing", M, [p["metrics"], "--out", out("m.png")], 2, ["--keys"], None),
        ("metrics --keys empty", M, [p["metrics"], "--keys", ",", "--out", out("m.png")], 2, ["--keys"], None),

        ("calibration good", C, [p["eval"], out("c.png")], 0, [], wrote(out("c.png"))),
        ("calibration string accuracy, default output", C, [p["eval_str_acc"]], 0, ["str_acc.json:1:", "accuracy"],
         lambda r: r.stdout == "wrote calibration.png\n"
         and os.path.getsize(os.path.join(d, "cwd", "calibration.png")) > 0),
        ("calibration bin without count", C, [p["eval_no_count"], out("c1.png")], 1,
         ["no_count.json:1:", "bin 1", "count"], None),
        ("calibration not a list", C, [p["eval_cal5"], out("c2.png")], 1, ["cal5.json:1:", "not a list"], None),
        ("calibration all bins empty", C, [p["eval_empty"], out("c4.png")], 1, ["empty_bins.json:1:", "no bin"],
         None),
        ("calibration NaN in a bin", C, [p["eval_nan"], out("c5.png")], 1, ["nan.json:1:", "bin 2"], None),
        ("calibration no table", C, [p["eval_none"], out("c6.png")], 1, ["none.json", "calibration"], None),
        ("calibration no arguments", C, [], 2, ["eval_json"], None),

        ("ppo good", P, [os.path.join(d, "ppo"), out("p.png")], 0, [],
         lambda r: ppo_ok(r, out("p.png"), 6, 6, 1.0, 2.0, 1.0)),
        ("ppo metrics.jsonl --skip 2 out", P, [p["ppo"], "--skip", "2", out("p2.png")], 0, [],
         lambda r: ppo_ok(r, out("p2.png"), 6, 4, 1.0, 2.0, 1.0)),
        ("ppo malformed lines skipped, default output", P, [os.path.join(d, "ppo_bad")], 0,
         ["ppo_bad/metrics.jsonl:8:", "kl"],
         lambda r: ppo_ok(r, os.path.join(d, "ppo_bad", "ppo.png"), 5, 5, 1.0, 2.0, 1.0) and all(
             f"ppo_bad/metrics.jsonl:{n}:" in r.stderr for n in range(3, 9)) and "step" in r.stderr),
        ("ppo constant reward: r2 null", P, [os.path.join(d, "ppo_flat"), out("pf.png")], 0, [],
         lambda r: ppo_ok(r, out("pf.png"), 5, 5, 0.5, 0.0, None)),
        ("ppo --skip leaves < 2", P, [os.path.join(d, "ppo"), out("p5.png"), "--skip", "5"], 1,
         ["--skip 5 leaves 1 of 6"], None),
        ("ppo --skip=10 on 6 rows", P, ["--skip=10", os.path.join(d, "ppo"), out("p5.png")], 1,
         ["--skip 10 leaves 0 of 6"], None),
        ("ppo --skip abc", P, [os.path.join(d, "ppo"), "--skip", "abc"], 2, ["--skip", "abc"], None),
        ("ppo --skip -2", P, [os.path.join(d, "ppo"), "--skip", "-2"], 2, ["--skip", "-2"], None),
        ("ppo --skip without value", P, [os.path.join(d, "ppo"), out("p6.png"), "--skip"], 2, ["--skip"], None),
        ("ppo --skap 1", P, [os.path.join(d, "ppo"), "--skap", "1"], 2, ["--skap"], None),
        ("ppo too few iterations", P, [os.path.join(d, "ppo_junk"), out("pj.png")], 1,
         ["ppo_junk", "need at least 3"], lambda r: "ppo_junk/metrics.jsonl:4:" in r.stderr),
        ("ppo with --bon and --compare (cut UTF-8 in their tables)", P,
         [os.path.join(d, "ppo"), out("pb.png"), "--bon", p["bon"], "--compare", p["compare"]], 0, [],
         lambda r: bon_ok(r, out("pb.png"))),
        ("ppo --bon without KL", P, [os.path.join(d, "ppo"), out("pb2.png"), "--bon", p["bon_nokl"]], 1,
         ["bon_nokl.txt:1:", "point 0", "sqrt_kl"], lambda r: not os.path.exists(out("pb2.png"))),
        ("ppo --bon without a curve", P, [os.path.join(d, "ppo"), out("pb3.png"), "--bon", p["compare"]], 1,
         ["compare.txt", "curve"], None),
        ("ppo --compare without kl_a", P,
         [os.path.join(d, "ppo"), out("pb4.png"), "--compare", p["compare_nokl"]], 1,
         ["compare_nokl.txt:1:", "kl_a", "--reference"], None),
        ("ppo missing dir", P, [os.path.join(d, "nope"), out("p7.png")], 1, ["nope", "No such file"], None),
        ("ppo dir without metrics.jsonl", P, [p["ppo_empty_dir"], out("p8.png")], 1,
         ["ppo_none/metrics.jsonl", "No such file"], None),
    ]
    return cs


def ppo_ok(r, png, iterations, fit_points, intercept, slope, r2):
    last = json.loads(r.stdout.splitlines()[-1], parse_constant=lambda c: 1 / 0)  # NaN -> error

    def close(a, b):  # None is JSON null
        return a is None and b is None or None not in (a, b) and math.isclose(a, b, abs_tol=1e-9)
    return (list(last) == PPO_KEYS and last["png"] == png and os.path.getsize(png) > 0
            and (last["iterations"], last["fit_points"]) == (iterations, fit_points)
            and close(last["intercept"], intercept) and close(last["slope"], slope) and close(last["r2"], r2)
            and "sqrt(KL)" in r.stdout.splitlines()[0])


def bon_ok(r, png):
    """The fit as in "ppo good", then the best-of-N curve and the held-out PPO point, with
    the curve's score interpolated at the point's sqrt(KL) = 0.3."""
    last = json.loads(r.stdout.splitlines()[-1], parse_constant=lambda c: 1 / 0)
    x1 = math.sqrt(math.log(2) - 0.5)
    return (list(last)[:6] == PPO_KEYS and last["png"] == png and os.path.getsize(png) > 0
            and (last["iterations"], last["fit_points"]) == (6, 6) and math.isclose(last["slope"], 2.0)
            and [p["n"] for p in last["bon"]] == [1, 2, 4]
            and math.isclose(last["policy_sqrt_kl"], 0.3) and math.isclose(last["policy_reward"], 1.3)
            and math.isclose(last["bon_at_policy_kl"], 1.0 + 0.2 * 0.3 / x1)
            and "best-of-N (held-out): N=1 +1.0000" in r.stdout and "PPO policy (held-out)" in r.stdout)


def run_case(case, d, env):
    name, script, args, code, errs, check = case
    r = subprocess.run([sys.executable, os.path.join(HERE, script)] + args, cwd=os.path.join(d, "cwd"),
                       env=env, capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    problems = []
    if r.returncode != code:
        problems.append(f"exit {r.returncode}, expected {code}")
    if "Traceback" in r.stderr:
        problems.append("traceback")
    if code == 1 and not (lines and lines[-1].startswith(script + ": ")
                          and len([x for x in lines if ": warning: " not in x]) == 1):
        problems.append("not a one-line error")
    if errs and not (lines and all(e in lines[-1] for e in errs)):
        problems.append(f"last stderr line lacks {errs}")
    if code == 0 and not errs and r.stderr:
        problems.append("unexpected stderr")
    try:
        if check and not check(r):
            problems.append("check failed")
    except Exception as e:  # a malformed output is a failed check
        problems.append(f"check failed ({type(e).__name__}: {e})")
    if problems:
        return f"FAIL {name}: {'; '.join(problems)}\n  $ {script} {' '.join(args)}\n  stdout: " \
               f"{r.stdout.strip()[-400:]!r}\n  stderr: {r.stderr.strip()[-600:]!r}"
    return None


def main():
    try:
        import matplotlib
    except ImportError as e:
        print(f"plot_check: skipped: matplotlib not importable ({e}); apt-get install python3-matplotlib")
        sys.exit(77)
    env = dict(os.environ, MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory(prefix="plot_check.") as d:
        os.makedirs(os.path.join(d, "out"))
        os.makedirs(os.path.join(d, "cwd"))
        cs = cases(build(d), d)
        with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
            failures = [f for f in pool.map(lambda c: run_case(c, d, env), cs) if f]
    for f in failures:
        print(f)
    if failures:
        print(f"plot_check: FAILED {len(failures)} of {len(cs)} cases")
        sys.exit(1)
    print(f"plot_check: OK, {len(cs)} cases (plot_metrics.py, plot_calibration.py, plot_ppo.py; "
          f"matplotlib {matplotlib.__version__})")


if __name__ == "__main__":
    main()
