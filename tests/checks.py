# SPDX-License-Identifier: MIT
"""checks.py - the verdicts the Python tests print, one a line, and count.

    from checks import check
    check(cond, "what must hold")   # prints "ok     ..." or "FAIL   ..."
    return check.verdict("cli_tty") # "cli_tty: N failed"; the exit status
"""


class Checks:
    def __init__(self):
        self.fails = 0

    def __call__(self, cond, what):
        print(("ok     " if cond else "FAIL   ") + what)
        if not cond:
            self.fails += 1
        return cond

    def verdict(self, name):
        """Print how many failed; return the exit status (0 or 1)."""
        print(f"{name}: {self.fails} failed")
        return 1 if self.fails else 0


check = Checks()
