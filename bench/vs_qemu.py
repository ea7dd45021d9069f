#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vs_qemu.py - precopy beside QEMU's own migration, in the same run.

For each RAM size, interleaved, over TCP loopback:

  iperf3      one TCP stream for a few seconds: what the loopback carries
  qemu        QEMU's precopy migration of a paused TCG guest (-S: it never
              writes) whose RAM is a file of random bytes, single stream
  qemu-mfd    the same with multifd (--multifd-channels, default 2)
  precopy     `precopy incoming` + `precopy migrate --dirty-rate 0` of a
              guest of the same size (its pages are non-zero, none repeats)

Both destinations have their RAM in place before the source connects:
QEMU's with prealloc=on on its memory backend (as -mem-prealloc does),
precopy's as `precopy incoming` prepares it before it listens. That set-up
is not in the times; each tool's own total-time is (QEMU: query-migrate's
total-time; precopy: the source's result record). QEMU's max-bandwidth is
lifted (its default caps a migration at 128 MiB/s).

Prints a table, and with --json one JSON object per row. Exit 0 when every
migration completed (precopy's also verified), 1 otherwise, 77 when QEMU or
iperf3 is missing (with --require, 1 instead).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from qmp import QMP  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def parse_size(s):
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def human(n):
    return f"{n / GiB:g}G" if n >= GiB else f"{n / MiB:g}M"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_random(path, size):
    """A file of SIZE bytes of random content, written quickly: one 16 MiB
    block of os.urandom, each copy with its own first 8 bytes per page, so
    that no two pages are equal and none is zero."""
    block = bytearray(os.urandom(16 * MiB))
    with open(path, "wb") as f:
        for off in range(0, size, len(block)):
            n = min(len(block), size - off)
            for p in range(0, n, 4096):
                block[p:p + 8] = (off + p).to_bytes(8, "little")
            f.write(block[:n])


def qemu_migrate(qemu, tmp, ram, ram_file, multifd, timeout):
    """One QEMU migration; returns a dict of its figures."""
    port = free_port()
    common = [qemu, "-accel", "tcg", "-nographic", "-nodefaults", "-S", "-m", str(ram // MiB)]
    src_sock, dst_sock = os.path.join(tmp, "src.qmp"), os.path.join(tmp, "dst.qmp")
    src = dst = None
    qs = qd = None
    try:
        dst = subprocess.Popen(common + [
            "-machine", "pc,memory-backend=ram0",
            "-object", f"memory-backend-ram,id=ram0,size={ram},prealloc=on",
            "-qmp", f"unix:{dst_sock},server=on,wait=off", "-incoming", "defer"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        src = subprocess.Popen(common + [
            "-machine", "pc,memory-backend=ram0",
            "-object", f"memory-backend-file,id=ram0,size={ram},mem-path={ram_file},share=on",
            "-qmp", f"unix:{src_sock},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        qd = QMP(dst_sock, timeout=max(30, ram // GiB * 30))  # prealloc takes a while
        qs = QMP(src_sock)
        for q in (qs, qd):
            if multifd:
                q.cmd("migrate-set-capabilities",
                      capabilities=[{"capability": "multifd", "state": True}])
                q.cmd("migrate-set-parameters", **{"multifd-channels": multifd})
        qs.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        qd.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        while True:
            st = qs.cmd("query-migrate")
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                return {"ok": False, "why": "timed out"}
            time.sleep(0.05)
        ok = st["status"] == "completed"
        if ok:  # the destination must have taken it too
            for _ in range(200):
                if qd.cmd("query-migrate").get("status") == "completed":
                    break
                time.sleep(0.05)
            else:
                ok = False
        return {"ok": ok, "why": st.get("error-desc", st["status"]),
                "total_ms": st.get("total-time", 0), "downtime_ms": st.get("downtime", 0),
                "setup_ms": st.get("setup-time", 0),
                "transferred": st.get("ram", {}).get("transferred", 0)}
    finally:
        for q in (qs, qd):
            if q:
                q.close()
        for p in (src, dst):
            if p:
                p.kill()
                p.wait()


def precopy_migrate(precopy, ram, timeout):
    """precopy incoming + precopy migrate of an idle guest of @ram bytes."""
    inc = subprocess.Popen([precopy, "incoming", "--listen", "tcp:127.0.0.1:0",
                            "--ram", str(ram), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        uri = None
        deadline = time.monotonic() + max(60, ram // GiB * 60)
        while time.monotonic() < deadline:
            line = inc.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            if ev.get("event") == "listening":
                uri = ev["uri"]
                break
        if not uri:
            return {"ok": False, "why": "incoming did not listen: " + inc.stderr.read()[-300:]}
        src = subprocess.run([precopy, "migrate", "--to", uri, "--ram", str(ram),
                              "--dirty-rate", "0", "--json"],
                             capture_output=True, text=True, timeout=timeout)
        res = verified = None
        for line in src.stdout.splitlines():
            ev = json.loads(line)
            if ev.get("event") == "result":
                res = ev
        out, err = inc.communicate(timeout=120)
        for line in out.splitlines():
            ev = json.loads(line)
            if ev.get("event") == "verify":
                verified = ev.get("verified")
        if src.returncode or inc.returncode or not res or not verified:
            return {"ok": False, "why": (src.stderr + err)[-300:] or "not verified"}
        return {"ok": True, "why": "completed, verified", "total_ms": res["total-time"],
                "downtime_ms": res["downtime"], "setup_ms": res["setup-time"],
                "transferred": res["transferred"]}
    finally:
        if inc.poll() is None:
            inc.kill()
            inc.wait()


def iperf3_rate(iperf3, seconds):
    """One TCP stream over loopback, bytes/s as iperf3's receiver saw it."""
    port = free_port()
    srv = subprocess.Popen([iperf3, "-s", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            time.sleep(0.1)  # the server may not listen yet: try again
            r = subprocess.run([iperf3, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                                "-J"], capture_output=True, text=True)
            try:
                j = json.loads(r.stdout)
                return j["end"]["sum_received"]["bits_per_second"] / 8
            except (ValueError, KeyError):
                continue
        return None
    finally:
        srv.kill()
        srv.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precopy", required=True, help="the precopy command")
    ap.add_argument("--ram", default="1G,4G,8G", help="sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=1, help="runs of each migration")
    ap.add_argument("--multifd-channels", type=int, default=2)
    ap.add_argument("--iperf-seconds", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=600, help="per migration, s")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--require", action="store_true",
                    help="a missing QEMU or iperf3 fails instead of skipping")
    a = ap.parse_args()

    qemu, iperf3 = shutil.which("qemu-system-x86_64"), shutil.which("iperf3")
    if not qemu or not iperf3:
        print(f"skipped: {'qemu-system-x86_64' if not qemu else 'iperf3'} is not installed",
              file=sys.stderr)
        return 1 if a.require else 77
    sizes = [parse_size(s) for s in a.ram.split(",") if s]
    rows, ok = [], True
    tmp = tempfile.mkdtemp(prefix="vs-qemu-")
    try:
        link = iperf3_rate(iperf3, a.iperf_seconds)
        rows.append({"ram": 0, "tool": "iperf3", "mode": "1 stream", "ok": link is not None,
                     "rate": link or 0})
        ok &= link is not None
        for ram in sizes:
            ram_file = os.path.join(tmp, "ram")
            fill_random(ram_file, ram)
            mfd = "multifd x%d" % a.multifd_channels
            for run in range(a.runs):
                for tool, mode, fn in (
                        ("qemu", "1 stream",
                         lambda: qemu_migrate(qemu, tmp, ram, ram_file, 0, a.timeout)),
                        ("qemu", mfd,
                         lambda: qemu_migrate(qemu, tmp, ram, ram_file, a.multifd_channels,
                                              a.timeout)),
                        ("precopy", "1 stream",
                         lambda: precopy_migrate(a.precopy, ram, a.timeout))):
                    r = fn()
                    r.update(ram=ram, tool=tool, mode=mode, run=run)
                    r["rate"] = (ram / (r["total_ms"] / 1000)
                                 if r.get("ok") and r.get("total_ms") else 0)
                    rows.append(r)
                    ok &= bool(r.get("ok"))
            os.unlink(ram_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if a.json:
        for r in rows:
            print(json.dumps(r))
    print(f"{'RAM':>6} {'tool':<8} {'mode':<11} {'total s':>8} {'downtime ms':>11} "
          f"{'MiB/s':>8} {'vs qemu 1 stream':>16} {'vs multifd':>10}  result")
    for r in rows:
        if r["tool"] == "iperf3":
            print(f"{'-':>6} {'iperf3':<8} {'1 stream':<11} {'':>8} {'':>11} "
                  f"{r['rate'] / MiB:8.0f} {'':>16} {'':>10}  the link, measured first")
            continue
        same = [x for x in rows if x.get("ram") == r["ram"] and x.get("run") == r.get("run")
                and x["tool"] == "qemu"]
        single = next((x for x in same if x["mode"] == "1 stream"), None)
        multi = next((x for x in same if x["mode"] != "1 stream"), None)
        vs1 = (f"{single['total_ms'] / r['total_ms']:15.1f}x" if r["tool"] == "precopy" and
               single and single.get("ok") and r.get("ok") and r["total_ms"] else "")
        vsm = (f"{multi['total_ms'] / r['total_ms']:9.1f}x" if r["tool"] == "precopy" and
               multi and multi.get("ok") and r.get("ok") and r["total_ms"] else "")
        tot = f"{r['total_ms'] / 1000:8.2f}" if r.get("ok") else f"{'-':>8}"
        dt = f"{r['downtime_ms']:11d}" if r.get("ok") else f"{'-':>11}"
        print(f"{human(r['ram']):>6} {r['tool']:<8} {r['mode']:<11} {tot} {dt} "
              f"{r['rate'] / MiB:8.0f} {vs1:>16} {vsm:>10}  {r.get('why', '')}")
    print("times: each tool's own total-time; the destinations' RAM was in place before "
          "the source connected (QEMU prealloc=on, precopy incoming before it listens)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
