#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""cli_plot.py PRECOPY WORKDIR - `precopy plot` draws a real run's timeline.

A short `precopy demo --json` gives the events. The figure from them (and
from the destination's events alone, as `precopy incoming --json` writes
them) must render with rsvg-convert into a PNG of 900 x 900, must put no
text (legend, labels) inside a plotting area, and must say what its two
bandwidth lines are. Bad input is refused with the usual exit statuses.
Skipped (77) without rsvg-convert (Debian: librsvg2-bin).
"""
import os
import re
import shutil
import struct
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import check  # noqa: E402


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def render(precopy, events, svg, png):
    p = subprocess.run([precopy, "plot", events, svg], capture_output=True, text=True)
    if p.returncode != 0:
        return f"precopy plot exit {p.returncode}: {p.stderr.strip()}"
    p = subprocess.run(["rsvg-convert", "-o", png, svg], capture_output=True, text=True)
    if p.returncode != 0:
        return f"rsvg-convert exit {p.returncode}: {p.stderr.strip()}"
    return None


def text_in_plots(svg):
    """Text elements whose anchor lies inside a plotting area (the frames)."""
    doc = open(svg).read()
    frames = [tuple(float(v) for v in m.groups()) for m in re.finditer(
        r'<rect x="([0-9.]+)" y="([0-9.]+)" width="([0-9.]+)" height="([0-9.]+)" '
        r'fill="none" stroke="#333"', doc)]
    bad = []
    for m in re.finditer(r'<text x="([0-9.]+)" y="([0-9.]+)"[^>]*>([^<]*)<', doc):
        x, y = float(m.group(1)), float(m.group(2))
        for fx, fy, fw, fh in frames:
            # the text's box: baseline y, about 11 px above it
            if fx < x < fx + fw and fy < y + 2 and y - 11 < fy + fh:
                bad.append(m.group(3))
    return frames, bad


def main():
    precopy, work = sys.argv[1], sys.argv[2]
    if not shutil.which("rsvg-convert"):
        print("cli_plot: rsvg-convert not found (Debian: librsvg2-bin); skipped")
        return 77
    os.makedirs(work, exist_ok=True)
    events = os.path.join(work, "demo.jsonl")
    with open(events, "w") as out:
        p = subprocess.run([precopy, "demo", "--ram", "16M", "--dirty-rate", "4M", "--json"],
                           stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
    check(p.returncode == 0, f"demo --json exit {p.returncode} {p.stderr.strip()}")

    svg, png = os.path.join(work, "timeline.svg"), os.path.join(work, "timeline.png")
    err = render(precopy, events, svg, png)
    check(err is None, f"the source's timeline renders: {err or png}")
    check(png_size(png) == (900, 900), f"a PNG of 900 x 900: {png_size(png)}")
    frames, bad = text_in_plots(svg)
    check(len(frames) == 3, f"three panels ({len(frames)})")
    check(not bad, f"no text inside a plotting area: {bad[:3]}")
    doc = open(svg).read()
    check("bandwidth the switchover decision uses" in doc and "bandwidth from wall time" in doc
          and "decision/wall" in doc, "both bandwidth lines named, their ratio given")
    check("Migration timeline, source" in doc, "the source's events are the ones drawn")

    # the destination's events alone, as precopy incoming --json writes them
    dest = os.path.join(work, "dest.jsonl")
    with open(events) as f, open(dest, "w") as out:
        out.writelines(ln for ln in f if '"role":"destination"' in ln)
    dsvg, dpng = os.path.join(work, "dest.svg"), os.path.join(work, "dest.png")
    err = render(precopy, dest, dsvg, dpng)
    check(err is None and png_size(dpng) == (900, 900),
          f"the destination's timeline renders, 900 x 900: {err or png_size(dpng)}")
    check("Migration timeline, destination" in open(dsvg).read() and not text_in_plots(dsvg)[1],
          "destination figure: titled so, no text inside a plotting area")

    # refused: no events, a missing file, wrong arguments
    empty = os.path.join(work, "empty.jsonl")
    open(empty, "w").write('{"event":"listening","uri":"tcp:127.0.0.1:1"}\n')
    p = subprocess.run([precopy, "plot", empty, os.path.join(work, "x.svg")],
                       capture_output=True, text=True)
    check(p.returncode == 1 and "no migration's progress events" in p.stderr
          and not os.path.exists(os.path.join(work, "x.svg")),
          f"no progress events: exit 1, said so, nothing written ({p.returncode})")
    p = subprocess.run([precopy, "plot", os.path.join(work, "absent.jsonl"), svg],
                       capture_output=True, text=True)
    check(p.returncode == 1 and "cannot read" in p.stderr, f"missing file: exit {p.returncode}")
    p = subprocess.run([precopy, "plot", events], capture_output=True, text=True)
    check(p.returncode == 2 and "usage" in p.stderr, f"one argument: exit {p.returncode}")

    return check.verdict("cli_plot")


if __name__ == "__main__":
    sys.exit(main())
