"""Helpers shared by scripts/plot_*.py: input and output checks that end in a one-line
error on stderr (exit 1) instead of a traceback, and warnings for skipped input lines.

matplotlib is imported only when needed (pyplot; check_out for an unusual extension), so
--help and errors stay fast, and a missing matplotlib is a clear error too.
"""
import json
import math
import os
import sys

PROG = os.path.basename(sys.argv[0])
MAX_WARNINGS = 20
_warnings = 0


def fail(msg):
    sys.exit(f"{PROG}: {msg}")


def warn(msg):
    """A warning on stderr; after MAX_WARNINGS of them, one note and then silence."""
    global _warnings
    _warnings += 1
    if _warnings <= MAX_WARNINGS:
        print(f"{PROG}: warning: {msg}", file=sys.stderr)
    elif _warnings == MAX_WARNINGS + 1:
        print(f"{PROG}: warning: more warnings suppressed", file=sys.stderr)


def number(v):
    """v if it is a finite int or float (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return v if math.isfinite(v) else None
    except OverflowError:  # an int too large for a float
        return None


def json_safe(v):
    """v, or None (JSON null) where v is a non-finite float: json.dumps would write NaN."""
    return v if number(v) is not None else None


def _import_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")
        return matplotlib
    except ImportError as e:
        fail(f"needs matplotlib ({e}); Debian: apt-get install python3-matplotlib")


def check_out(path):
    """Fail unless matplotlib can write an image to `path`: call before any work."""
    ext = os.path.splitext(path)[1][1:].lower()
    if ext not in ("png", "pdf", "svg"):  # those always work: spare the import of matplotlib
        _import_matplotlib()
        from matplotlib.backend_bases import FigureCanvasBase
        types = FigureCanvasBase.get_supported_filetypes()
        if ext not in types:
            fail(f"{path}: output needs an image extension matplotlib writes ({', '.join(sorted(types))})")
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        fail(f"{path}: output directory {d} does not exist")
    if os.path.isdir(path):
        fail(f"{path}: output is a directory")
    if not os.access(d, os.W_OK):
        fail(f"{path}: output directory {d} is not writable")


def pyplot():
    _import_matplotlib()
    import matplotlib.pyplot as plt
    return plt


def savefig(fig, path, dpi):
    try:
        fig.savefig(path, dpi=dpi)
    except (OSError, ValueError, ImportError) as e:
        fail(f"{path}: cannot write: {e}")


def read_lines(path, lenient=False):
    """(line number, stripped line) for the non-blank lines of a UTF-8 text file; lenient:
    bytes that are not UTF-8 become U+FFFD (an hh-eval table can quote a sample cut inside
    a character)."""
    try:
        with open(path, encoding="utf-8", errors="replace" if lenient else "strict") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        fail(f"{path}: not a UTF-8 text file (byte {e.start})")
    except OSError as e:
        fail(f"{path}: {e.strerror or e}")
    if "\0" in text:
        fail(f"{path}: binary file, not text")
    return [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


NOT_JSON = object()


def parse_json(line):
    """The JSON value of `line`, or NOT_JSON."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return NOT_JSON


def read_jsonl(path):
    """(line number, object) for each line of `path` that is a JSON object; warns about
    (and skips) the other non-blank lines."""
    records = []
    for n, line in read_lines(path):
        rec = parse_json(line)
        if rec is NOT_JSON:
            warn(f"{path}:{n}: not JSON, skipped")
        elif not isinstance(rec, dict):
            warn(f"{path}:{n}: not a JSON object, skipped")
        else:
            records.append((n, rec))
    return records


def read_last_object(path, key, what, lenient=False):
    """(line number, object) of the last line of `path` that parses as a JSON object with
    `key` (the last line of hh-pm eval, hh-eval bon, hh-eval compare); fails naming `what`.
    lenient: as read_lines."""
    for n, line in reversed(read_lines(path, lenient)):
        obj = parse_json(line)
        if isinstance(obj, dict) and key in obj:
            return n, obj
    fail(f"{path}: no JSON line with a \"{key}\" field ({what})")
