"""What the numpy replays of CUDA kernels (scripts/*_check.py) share: numpy or a skip (exit
77, which ctest reports as skipped), the failure list with its FAIL lines and exit status,
and the planted-bug self-test (each planted bug must make some check fail)."""
import sys


def numpy_or_skip(name):
    try:
        import numpy
    except ImportError:
        print(f"{name}: skipped (needs numpy: apt-get install python3-numpy)")
        sys.exit(77)
    return numpy


class Checks:
    def __init__(self, name):
        self.name = name
        self.failures = []

    def __call__(self, ok, what):
        if not ok:
            self.failures.append(what)
            print("FAIL:", what)

    def planted_bugs_caught(self, plants, set_plant, run):
        """set_plant(p); run() for each planted bug p: it must add a failure (those failures
        are then dropped). Ends with set_plant(None)."""
        import numpy as np
        for plant in plants:
            set_plant(plant)
            before = len(self.failures)
            with np.errstate(all="ignore"):  # a planted bug may well make NaNs
                run()
            caught = len(self.failures) > before
            del self.failures[before:]
            print(f"planted bug {plant}: {'caught' if caught else 'NOT caught'}")
            self(caught, f"planted bug {plant} not caught")
        set_plant(None)

    def finish(self):
        if self.failures:
            print(f"{self.name}: {len(self.failures)} failure(s)")
            sys.exit(1)
        print(f"{self.name}: all checks passed")
