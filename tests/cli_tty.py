#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""cli_tty.py PRECOPY - what a person sees: `precopy demo` on a terminal.

Runs the demo under a pseudo-terminal of 120 columns (standard output and
error both on it, as in an interactive shell) and plays the bytes through a
small terminal model. Checks:
  - every redraw of the progress line begins with carriage return + erase
    to end of line, and no line ever reaches the terminal's width (a
    wrapped line could not be erased);
  - every summary line starts at column 0 of a line of its own (nothing of
    the progress line left in front of it);
  - one story: the source's summary, then the destination's verdict, then
    the closing line;
  - with standard error not a terminal, or with --json, no progress line
    (no carriage return, no escape sequence) is written at all.
"""
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import fcntl

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import check  # noqa: E402

COLS = 120
DEMO = ["demo", "--ram", "32M", "--dirty-rate", "8M"]


def run_pty(argv):
    """Run argv with stdin/stdout/stderr on a new pty; return (rc, bytes)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLS, 0, 0))
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                         start_new_session=True)
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 120)
        if not r:
            p.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last holder of the slave closed it
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(), out


def screen(data):
    """Play @data through a terminal of COLS columns: the lines a person
    sees, whether a line wrapped, and the escape sequences met."""
    lines, cur, col, wrapped, escapes = [], [], 0, False, set()
    i = 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[[0-9;?]*[A-Za-z]", data[i:])
            seq = m.group(0) if m else "\x1b"
            escapes.add(seq)
            if seq == "\x1b[K":
                del cur[col:]
            i += len(seq)
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        else:
            if col >= COLS:
                wrapped = True
                lines.append("".join(cur))
                cur, col = [], 0
            if col < len(cur):
                cur[col] = ch
            else:
                cur.extend(" " * (col - len(cur)))
                cur.append(ch)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur))
    return lines, wrapped, escapes


def main():
    precopy = sys.argv[1]

    rc, raw = run_pty([precopy] + DEMO)
    text = raw.decode("utf-8", "replace")
    check(rc == 0, f"demo under a pty exits 0 (exit {rc})")
    redraws = text.count("\r\x1b[K")
    check(redraws >= 2, f"the progress line was drawn ({redraws} redraws)")
    # A carriage return either ends a line (the tty's \r\n) or starts a
    # redraw that erases what was there.
    bare = [m.start() for m in re.finditer(r"\r(?!\n|\x1b\[K)", text)]
    check(not bare, f"every redraw erases the line first ({len(bare)} do not)")
    lines, wrapped, escapes = screen(text)
    long = [seg for seg in re.findall(r"\r\x1b\[K([^\r\n]*)", text) if len(seg) >= COLS]
    check(not long, f"no progress line reaches {COLS} columns ({long[:1]!r})")
    check(not wrapped, f"no line wraps at {COLS} columns")
    check(escapes <= {"\x1b[K"}, f"no escape sequence but erase-line ({sorted(map(repr, escapes))})")
    for pat in ("precopy: source:", "precopy: destination:", "  downtime ", "  received ",
                "  guest pattern ", "precopy demo: 32.00 MiB in"):
        at = [ln for ln in lines if pat in ln]
        check(len(at) == 1 and at[0].startswith(pat),
              f"'{pat.strip()}' starts a line of its own: {at!r}")
    order = [next((i for i, ln in enumerate(lines) if ln.startswith(p)), -1)
             for p in ("precopy: source:", "precopy: destination:", "precopy demo: 32.00 MiB")]
    check(-1 not in order and order == sorted(order),
          f"source summary, destination verdict, closing line in that order (lines {order})")
    closing = next((ln for ln in lines if ln.startswith("precopy demo: 32.00 MiB")), "")
    check(re.search(r"in [0-9.]+ s; downtime [0-9]+ ms \(limit 300 ms[^)]*\); sent [0-9.]+x the RAM; every page verified", closing)
          is not None, f"closing line: {closing!r}")
    # the progress line's last state stays on a line of its own
    prog = [ln for ln in lines if re.match(r"^ *[0-9]+\.[0-9] s  ", ln)]
    check(len(prog) == 1 and "completed" in prog[0], f"the last progress line is kept: {prog!r}")
    if check.fails:
        sys.stdout.write("# the screen:\n" + "".join("#  " + ln + "\n" for ln in lines))

    # standard error not a terminal: nothing drawn
    p = subprocess.run([precopy] + DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=300)
    check(p.returncode == 0 and b"\r" not in p.stderr and b"\x1b" not in p.stderr
          and b"\x1b" not in p.stdout,
          f"stderr not a terminal: no progress line (exit {p.returncode}, "
          f"{len(p.stderr)} bytes on stderr)")
    # --json on a terminal: only JSON lines
    rc, raw = run_pty([precopy] + DEMO + ["--json"])
    text = raw.decode("utf-8", "replace")
    rest = [ln for ln in text.split("\r\n") if ln and not ln.startswith("{")]
    check(rc == 0 and "\x1b" not in text and not rest,
          f"--json on a terminal: JSON lines only (exit {rc}, other lines {rest[:3]!r})")

    return check.verdict("cli_tty")


if __name__ == "__main__":
    sys.exit(main())
