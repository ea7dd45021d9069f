#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qemu_bridge.py - migrate an unmodified QEMU through `precopy bridge`.

Two QEMUs (TCG, machine pc, guest RAM backed by a file with share=on) and
two bridges on this machine:

  source QEMU -S --migrate unix:out.sock--> precopy bridge --listen-unix out.sock
      --to URI ==(precopy transport)==> precopy bridge --listen URI
      --to-unix in.sock --> destination QEMU -incoming unix:in.sock

The source's RAM file is filled with known bytes before QEMU starts (every
16th page zero, the others numbered); the destination's starts as 0xee. The
guest is paused (-S) so it never writes. Passes when the source and the
destination both report `completed`, both bridges exit 0, and the
destination's RAM file equals the source's byte for byte.

Exit 0 pass, 1 fail, 77 skipped (no QEMU, or the transport is not built; for
rdma with PRECOPY_REQUIRE_RDMA=1, as in CI, that fails instead: exit 1).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from qmp import QMP  # noqa: E402

PAGE = 4096


def log(msg):
    print(f"[{time.monotonic() - T0:7.2f}s] {msg}", flush=True)


T0 = time.monotonic()


def fill_source(path, size):
    """Known bytes: page i holds its number and a tag; every 16th is zero."""
    with open(path, "wb") as f:
        for i in range(size // PAGE):
            if i % 16 == 5:
                f.write(bytes(PAGE))
            else:
                f.write((i.to_bytes(8, "little") + b"precopy!") * (PAGE // 16))


def expected_page(i):
    return bytes(PAGE) if i % 16 == 5 else (i.to_bytes(8, "little") + b"precopy!") * (PAGE // 16)


def start_bridge(argv, what, timeout):
    """Start a bridge and wait for its 'listening on URI' line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("listening on "):
        p.kill()
        raise RuntimeError(f"{what} bridge did not start (said {line!r}, status {p.wait()})")
    log(f"{what} bridge: {line}")
    return p, line[len("listening on "):]


def wait_status(qmp, what, timeout, want=("completed",)):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        info = qmp.cmd("query-migrate")
        st = info.get("status", "none")
        if st != last:
            log(f"{what}: migration {st}")
            last = st
        if st in want:
            return info
        if st in ("failed", "cancelled"):
            raise RuntimeError(f"{what}: migration {st}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: migration still '{st}' after {timeout} s")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precopy", required=True, help="the precopy binary")
    ap.add_argument("--transport", default="tcp", help="tcp or rdma")
    ap.add_argument("--addr", default=None,
                    help="address the bridges use (default 127.0.0.1, or "
                         "$PRECOPY_RDMA_ADDR for rdma)")
    ap.add_argument("--port", type=int, default=0,
                    help="port the destination bridge listens on (default 0: any free one)")
    ap.add_argument("--ram", type=int, default=64, help="guest MiB (default 64)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds for each wait (default 600)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--soft-roce", metavar="RUN",
                    help="run everything inside `RUN --timeout ... --` (soft-roce-setup/run), "
                         "where an RDMA device exists")
    a = ap.parse_args()

    # CI sets PRECOPY_REQUIRE_RDMA=1: there the rdma case must run, not skip.
    skip = 1 if a.transport == "rdma" and os.environ.get("PRECOPY_REQUIRE_RDMA") == "1" else 77
    said = "failed (PRECOPY_REQUIRE_RDMA=1)" if skip == 1 else "skipped"
    qemu = shutil.which(a.qemu)
    if not qemu:
        print(f"{said}: {a.qemu} not found (Debian: qemu-system-x86)")
        return skip
    out = subprocess.run([a.precopy, "version"], capture_output=True, text=True).stdout
    schemes = [s.strip() for line in out.splitlines() if line.startswith("transports:")
               for s in line.split(":", 1)[1].split(",")]
    if a.transport not in schemes:
        print(f"{said}: {a.transport} transport not built (this precopy has: "
              f"{', '.join(schemes)})")
        return skip
    if a.soft_roce:
        # Both bridges and both QEMUs inside the throwaway VM (or on this
        # host if it can have rxe): QEMU under TCG inside a TCG guest.
        argv = [a.soft_roce, "--timeout", str(int(a.timeout * 3 + 120)), "--",
                sys.executable, os.path.abspath(__file__), "--precopy",
                os.path.abspath(a.precopy), "--transport", a.transport, "--ram", str(a.ram),
                "--port", str(a.port),
                "--qemu", a.qemu, "--timeout", str(a.timeout)]
        log("running in the Soft-RoCE environment: " + " ".join(argv))
        return subprocess.call(argv)
    addr = a.addr or (os.environ.get("PRECOPY_RDMA_ADDR", "127.0.0.1")
                      if a.transport == "rdma" else "127.0.0.1")

    tmp = tempfile.mkdtemp(prefix="precopy-qemu-")
    size = a.ram << 20
    src_mem, dst_mem = os.path.join(tmp, "src.mem"), os.path.join(tmp, "dst.mem")
    procs = []
    status = 1
    try:
        fill_source(src_mem, size)
        with open(dst_mem, "wb") as f:
            f.write(b"\xee" * size)
        log(f"{a.ram} MiB RAM files written in {tmp}")

        def qemu_cmd(mem, qmp_path, extra):
            return [qemu, "-accel", "tcg", "-machine", "pc,memory-backend=mem",
                    "-m", f"{a.ram}M", "-nodefaults", "-display", "none",
                    "-object", f"memory-backend-file,id=mem,size={a.ram}M,"
                               f"mem-path={mem},share=on",
                    "-qmp", f"unix:{qmp_path},server=on,wait=off"] + extra

        in_sock = os.path.join(tmp, "in.sock")
        out_sock = os.path.join(tmp, "out.sock")
        dst_argv = qemu_cmd(dst_mem, os.path.join(tmp, "dst.qmp"),
                            ["-incoming", f"unix:{in_sock}"])
        src_argv = qemu_cmd(src_mem, os.path.join(tmp, "src.qmp"), ["-S"])
        log("destination: " + " ".join(dst_argv))
        procs.append(subprocess.Popen(dst_argv, stdin=subprocess.DEVNULL))
        log("source: " + " ".join(src_argv))
        procs.append(subprocess.Popen(src_argv, stdin=subprocess.DEVNULL))
        dst = QMP(os.path.join(tmp, "dst.qmp"), a.timeout)
        src = QMP(os.path.join(tmp, "src.qmp"), a.timeout)
        log(f"QEMU {src.version['major']}.{src.version['minor']}.{src.version['micro']} "
            f"up: source {src.cmd('query-status')['status']}, "
            f"destination {dst.cmd('query-status')['status']}")

        dbr, uri = start_bridge([a.precopy, "bridge", "--listen", f"{a.transport}:{addr}:{a.port}",
                                 "--to-unix", in_sock], "destination", a.timeout)
        procs.append(dbr)
        sbr, _ = start_bridge([a.precopy, "bridge", "--listen-unix", out_sock, "--to", uri],
                              "source", a.timeout)
        procs.append(sbr)

        t_mig = time.monotonic()
        src.cmd("migrate", uri=f"unix:{out_sock}")
        info = wait_status(src, "source", a.timeout)
        log(f"source: {info.get('ram', {}).get('transferred', 0)} bytes of RAM sent, "
            f"total-time {info.get('total-time')} ms, downtime {info.get('downtime')} ms")
        wait_status(dst, "destination", a.timeout)
        log(f"migrated in {time.monotonic() - t_mig:.2f} s; destination is "
            f"{dst.cmd('query-status')['status']}")
        for p, what in ((sbr, "source"), (dbr, "destination")):
            rc = p.wait(timeout=a.timeout)
            if rc != 0:
                raise RuntimeError(f"{what} bridge exited with {rc}")
        log("both bridges exited 0")

        # Compare while both QEMUs still hold the files: nothing runs.
        with open(src_mem, "rb") as f:
            s_bytes = f.read()
        with open(dst_mem, "rb") as f:
            d_bytes = f.read()
        changed = sum(1 for i in range(size // PAGE)
                      if s_bytes[i * PAGE:(i + 1) * PAGE] != expected_page(i))
        log(f"source RAM: {changed} of {size // PAGE} pages differ from what was "
            f"written before start (QEMU's own writes at reset)")
        if s_bytes != d_bytes:
            bad = [i for i in range(size // PAGE)
                   if s_bytes[i * PAGE:(i + 1) * PAGE] != d_bytes[i * PAGE:(i + 1) * PAGE]]
            raise RuntimeError(f"destination RAM differs from the source in {len(bad)} "
                               f"pages, first at page {bad[0]}")
        log(f"destination RAM file equals the source's ({size} bytes)")
        for q in (src, dst):
            try:
                q.cmd("quit")
            except (RuntimeError, OSError):
                pass
        status = 0
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"FAIL: {e}", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    p.wait(timeout=5 if status == 0 else 0.1)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log("PASS" if status == 0 else "FAIL")
    return status


if __name__ == "__main__":
    sys.exit(main())
