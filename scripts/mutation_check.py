#!/usr/bin/env python3
"""Mutation check: does the test suite notice when the math is wrong?

Each mutant in tests/mutants.txt is one small, deliberate defect in the source (a sign
flipped, a term dropped, a bound moved by one). For each, this script builds a scratch copy
of the tree with that defect alone and runs the C++ test suites; the mutant is "killed"
when some test fails and "survives" when every test passes. A survivor is a place where
the tests cannot see a wrong result: a test to add, or (rarely) a mutant that changes
nothing, which the list then marks as such with its reason.

Format of the list (a diff-like block per mutant):

    == src/ops/cpu/layernorm.cpp: backward drops the mean of dxhat
    -    exact line(s) of the source, after the one-character marker
    +    what they become

The '-' lines must occur exactly once in the file, so a list that no longer matches the
source is an error, never a silent skip. A header "=~ path: why" marks a mutant known to
be equivalent (it changes no result); it must survive, and is reported as such.

Usage: scripts/mutation_check.py [--list FILE] [--only REGEX] [--scratch DIR] [--jobs N]
Exit status: 0 when every mutant is killed (or is a marked equivalent that survived),
1 when any survives or fails to build, 2 for a bad list or setup.
"""

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Suites that check scripts or whole-pipeline plumbing rather than results; a mutant of
# the C++ math is judged by the GoogleTest suites. (mutants_list_check would fail on any
# mutated copy: it is this list's own check.)
DEFAULT_EXCLUDE = ("demo_mini|download_check|plot_check|cuda_index_check|decode_fast_check|"
                   "flash_tc_check|skinny_check|mutants_list_check")


class ListError(Exception):
    pass


class Mutant:
    def __init__(self, path, why, line, equivalent):
        self.path, self.why, self.line, self.equivalent = path, why, line, equivalent
        self.find, self.replace = [], []

    def name(self):
        return f"{self.path}:{self.why}"


def parse_list(list_path):
    mutants, current = [], None
    with open(list_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            where = f"{list_path}:{n}"
            if line.startswith("==") or line.startswith("=~"):
                m = re.match(r"^=[=~] (\S+): (.+)$", line)
                if not m:
                    raise ListError(f"{where}: expected '== path: what the defect is'")
                current = Mutant(m.group(1), m.group(2).strip(), n, line.startswith("=~"))
                mutants.append(current)
            elif line.startswith("-") or line.startswith("+"):
                if current is None:
                    raise ListError(f"{where}: a '{line[0]}' line before any '==' header")
                if line[0] == "+" and not current.find:
                    raise ListError(f"{where}: '+' lines must follow the '-' lines")
                (current.find if line[0] == "-" else current.replace).append(line[1:])
            elif line.strip() == "" or line.startswith("#"):
                continue
            else:
                raise ListError(f"{where}: a line must start with ==, =~, -, + or #")
    for m in mutants:
        if not m.find:
            raise ListError(f"{list_path}:{m.line}: mutant '{m.why}' has no '-' lines")
        if m.find == m.replace:
            raise ListError(f"{list_path}:{m.line}: mutant '{m.why}' changes nothing")
    return mutants


def mutate(text, m, list_path):
    old = "\n".join(m.find) + "\n"
    new = "\n".join(m.replace) + ("\n" if m.replace else "")
    count = text.count(old)
    if count != 1:
        raise ListError(
            f"{list_path}:{m.line}: the '-' lines occur {count} times in {m.path} (need exactly 1)")
    return text.replace(old, new)


def copy_tree(scratch):
    """The tracked files as they are in the working tree, into scratch/tree."""
    tree = os.path.join(scratch, "tree")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, dst = os.path.join(ROOT, rel), os.path.join(tree, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb") as a:
            data = a.read()
        # Rewrite only what changed, so the scratch build stays incremental across runs. A
        # rewritten file gets the current time (not the source's, which may be older than
        # the scratch's objects built from a mutant), so make rebuilds what depends on it.
        if not os.path.exists(dst) or open(dst, "rb").read() != data:
            with open(dst, "wb") as b:
                b.write(data)
            shutil.copymode(src, dst)
    # Tests find the shared HH data at <source>/../shared, as in a checkout.
    shared, link = os.path.join(os.path.dirname(ROOT), "shared"), os.path.join(scratch, "shared")
    if os.path.isdir(shared) and not os.path.lexists(link):
        os.symlink(shared, link)
    return tree


def run(cmd, cwd, log, timeout=None):
    """Appends the command's output to `log` (a mutant's build and tests share one)."""
    with open(log, "a") as out:
        try:
            return subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def failed_tests(log):
    names = []
    for line in open(log, errors="replace"):
        m = re.match(r"^\s*\d+ - (\S+) \(", line)
        if m:
            names.append(m.group(1))
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", default=os.path.join(ROOT, "tests", "mutants.txt"))
    ap.add_argument("--only", help="run the mutants whose 'path:why' matches this regex")
    ap.add_argument("--scratch", default=os.path.join(ROOT, "build-mutants"),
                    help="scratch copy and build (kept between runs; default build-mutants)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                    help="ctest -E regex of suites not run (default: the script checks)")
    ap.add_argument("--check-list", action="store_true",
                    help="only check that every mutant applies to the source; build nothing")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    try:
        mutants = parse_list(args.list)
        if args.only:
            mutants = [m for m in mutants if re.search(args.only, m.name())]
        for m in mutants:
            path = os.path.join(ROOT, m.path)
            if not os.path.isfile(path):
                raise ListError(f"{args.list}:{m.line}: no file {m.path}")
            mutate(open(path, encoding="utf-8").read(), m, args.list)
    except (ListError, OSError, re.error) as e:
        print(f"mutation_check: {e}", file=sys.stderr)
        return 2
    if not mutants:
        print("mutation_check: no mutant selected", file=sys.stderr)
        return 2
    if args.check_list:
        print(f"mutation_check: all {len(mutants)} mutants apply to the source")
        return 0

    os.makedirs(args.scratch, exist_ok=True)
    # One run at a time per scratch copy: a second one would rewrite files under the
    # first one's build (and its last rebuild could leave objects older than their source).
    lock = open(os.path.join(args.scratch, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"mutation_check: {args.scratch} is in use by another run", file=sys.stderr)
        return 2
    tree = copy_tree(args.scratch)
    build = os.path.join(args.scratch, "build")
    logs = os.path.join(args.scratch, "logs")
    os.makedirs(logs, exist_ok=True)
    configure = ["cmake", "-S", tree, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DHH_CUDA=OFF"]
    build_cmd = ["cmake", "--build", build, "-j", str(args.jobs)]
    ctest = ["ctest", "-j", str(args.jobs), "-E", args.exclude, "--timeout", "600"]
    for old_log in os.listdir(logs):
        os.remove(os.path.join(logs, old_log))
    baseline_log = os.path.join(logs, "baseline.log")
    print("mutation_check: building the unmutated copy and running its tests", flush=True)
    if (run(configure, ROOT, baseline_log) or run(build_cmd, ROOT, baseline_log) or
            run(ctest, build, baseline_log)):
        print(f"mutation_check: the unmutated tree does not build or pass; see {baseline_log}",
              file=sys.stderr)
        return 2

    results = []
    for i, m in enumerate(mutants, 1):
        path = os.path.join(tree, m.path)
        original = open(path, encoding="utf-8").read()
        log = os.path.join(logs, f"mutant-{m.line}.log")
        t0 = time.time()
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(mutate(original, m, args.list))
            if run(build_cmd, ROOT, log) != 0:
                verdict, detail = "NO BUILD", "the mutant does not compile"
            else:
                rc = run(ctest, build, log, timeout=1800)
                failed = failed_tests(log)
                if rc == 0:
                    verdict, detail = ("equivalent" if m.equivalent else "SURVIVED"), ""
                else:
                    verdict = "killed" if not m.equivalent else "KILLED (marked equivalent)"
                    detail = ", ".join(failed) or f"ctest exit {rc}"
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original)
        results.append((m, verdict, detail))
        print(f"[{i}/{len(mutants)}] {verdict:<10} {m.path}: {m.why}"
              f"{'  (' + detail + ')' if detail else ''}  {time.time() - t0:.0f}s", flush=True)
    run(build_cmd, ROOT, os.path.join(logs, "restore.log"))

    bad = [r for r in results if r[1] not in ("killed", "equivalent")]
    killed = sum(1 for r in results if r[1] == "killed")
    print(f"\nmutation_check: {killed} of {len(results)} mutants killed, "
          f"{sum(1 for r in results if r[1] == 'equivalent')} marked equivalent, {len(bad)} not")
    for m, verdict, _ in bad:
        print(f"  {verdict}: {args.list}:{m.line} {m.path}: {m.why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
