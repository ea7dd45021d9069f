#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bridge_stream.py - `precopy bridge` as a byte pipe, without QEMU.

Two bridges over TCP loopback, with this script playing both QEMUs:

  ok        the "source" sends 24 MiB of random bytes and ends its stream;
            the "destination" reads to the end, answers with the SHA-256 of
            what it got plus 3 MiB of its own, and closes. Both ends check
            every byte; both bridges exit 0.
  no-dest   nothing listens on the destination's unix socket: the
            destination bridge fails, tells the source bridge, which closes
            the source's socket (so a QEMU there sees its migration fail);
            both bridges exit 1 and say why.
  src-dies  the source sends 1 MiB and is killed mid-stream (its socket
            reset): the destination's socket is closed as well.
  tls       "ok" again over tls: with a pre-shared key.
  not-a-bridge  the source bridge is pointed at a TCP port where a plain
            server speaks garbage: it fails cleanly (exit 1) and closes the
            source's socket.
  usage     wrong flag combinations exit 2.
"""
import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def start_bridge(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line.startswith("{"):
        ev = json.loads(line)
        if ev.get("event") == "listening":
            return p, ev["uri"]
    if not line.startswith("listening on "):
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"bridge did not start: {line!r} {err!r}")
    return p, line[len("listening on "):]


def connect_unix(path, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_all(s):
    chunks = []
    while True:
        try:
            b = s.recv(1 << 20)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def finish(p, what, want):
    out, err = p.communicate(timeout=120)
    sys.stdout.write(out + err)
    if p.returncode != want:
        raise AssertionError(f"{what} bridge exited {p.returncode}, expected {want}")
    return err, out


def fake_destination(path, serve):
    """QEMU's side at the destination: a unix socket at path whose first
    connection serve(c) is handed in a thread (then closed); the thread,
    started."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(60)  # a bridge that never connects fails the case, not hangs it

    def run():
        c, _ = srv.accept()
        c.settimeout(None)
        serve(c)
        c.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def start_bridges(precopy, in_path, out_path, scheme="tcp", extra=(), dest_extra=()):
    """The destination bridge (listening on scheme:, writing to in_path) and
    the source bridge (listening on out_path) pointed at it."""
    dbr, uri = start_bridge([precopy, "bridge", "--listen", f"{scheme}:127.0.0.1:0",
                             "--to-unix", in_path, *extra, *dest_extra])
    sbr, _ = start_bridge([precopy, "bridge", "--listen-unix", out_path, "--to", uri, *extra])
    return dbr, sbr


def case_ok(precopy, tmp, scheme="tcp", extra=()):
    in_path = os.path.join(tmp, f"ok-{scheme}-in.sock")
    out_path = os.path.join(tmp, f"ok-{scheme}-out.sock")
    payload = os.urandom(24 << 20)
    reply_tail = os.urandom(3 << 20)
    got = {}

    def destination(c):
        data = read_all(c)
        got["n"] = len(data)
        c.sendall(hashlib.sha256(data).digest() + reply_tail)

    t = fake_destination(in_path, destination)
    dbr, sbr = start_bridges(precopy, in_path, out_path, scheme, extra)
    s = connect_unix(out_path)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    back = read_all(s)
    s.close()
    t.join()
    finish(sbr, "source", 0)
    finish(dbr, "destination", 0)
    assert got["n"] == len(payload), f"destination got {got['n']} of {len(payload)} bytes"
    assert back[:32] == hashlib.sha256(payload).digest(), "bytes changed on the way"
    assert back[32:] == reply_tail, "bytes changed on the way back"
    assert not os.path.exists(out_path), "source bridge left its socket file"
    print(f"ok ({scheme}): 24 MiB forward and 3 MiB back, byte for byte; both bridges exit 0")


def case_tls(precopy, tmp):
    """The same over tls: with a pre-shared key, where TLS is built in."""
    if "tls" not in subprocess.run([precopy, "version"], capture_output=True,
                                   text=True).stdout.split("transports:")[-1]:
        print("skip tls: not built in")
        return
    psk = os.path.join(tmp, "psk")
    fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode() + b"\n")
    os.close(fd)
    case_ok(precopy, tmp, "tls", ("--tls-psk-file", psk))


def case_no_dest(precopy, tmp):
    out_path = os.path.join(tmp, "nd-out.sock")
    dbr, sbr = start_bridges(precopy, os.path.join(tmp, "nobody.sock"), out_path,
                             dest_extra=("--json",))
    s = connect_unix(out_path)
    try:
        s.sendall(b"x" * 65536)
    except OSError:
        pass
    rest = read_all(s)  # returns once the source bridge closed us
    s.close()
    assert rest == b"", "unexpected bytes back"
    err, _ = finish(sbr, "source", 1)
    assert "nobody.sock" in err, f"source bridge did not pass the reason on: {err!r}"
    _, out = finish(dbr, "destination", 1)
    res = json.loads(out.strip().splitlines()[-1])  # --json: a result event
    assert res["event"] == "result" and res["status"] == "failed" and \
        "nobody.sock" in res["error"], res
    print("no-dest: source's socket closed, both bridges exit 1 with the reason")


def case_src_dies(precopy, tmp):
    in_path, out_path = os.path.join(tmp, "sd-in.sock"), os.path.join(tmp, "sd-out.sock")
    got = {}

    def destination(c):
        got["data"] = read_all(c)

    t = fake_destination(in_path, destination)
    dbr, sbr = start_bridges(precopy, in_path, out_path)
    s = connect_unix(out_path)
    s.sendall(b"y" * (1 << 20))
    time.sleep(0.5)
    sbr.kill()  # the source host's bridge dies
    s.close()
    t.join(timeout=120)
    assert not t.is_alive(), "destination socket not closed after the source bridge died"
    sbr.communicate()
    finish(dbr, "destination", 1)
    print(f"src-dies: destination's socket closed after {len(got['data'])} bytes; "
          "destination bridge exits 1")


def case_not_a_bridge(precopy, tmp):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def garbage():
        c, _ = srv.accept()
        c.sendall(b"HTTP/1.0 200 OK\r\n\r\n" * 4)
        time.sleep(1)
        c.close()

    t = threading.Thread(target=garbage)
    t.start()
    out_path = os.path.join(tmp, "nb-out.sock")
    sbr, _ = start_bridge([precopy, "bridge", "--listen-unix", out_path,
                           "--to", f"tcp:127.0.0.1:{port}"])
    s = connect_unix(out_path)
    read_all(s)
    s.close()
    finish(sbr, "source", 1)
    t.join()
    print("not-a-bridge: source bridge exits 1")


def case_usage(precopy, tmp):
    for argv in (["bridge"], ["bridge", "--listen-unix", "x"],
                 ["bridge", "--listen-unix", "x", "--to-unix", "y"],
                 ["bridge", "--listen", "tcp:127.0.0.1:0", "--to", "tcp:127.0.0.1:1"]):
        r = subprocess.run([precopy] + argv, capture_output=True, text=True)
        assert r.returncode == 2, f"{argv}: exit {r.returncode}"
    r = subprocess.run([precopy, "bridge", "--listen-unix", os.path.join(tmp, "u"),
                        "--to", "nosuch:host:1"], capture_output=True, text=True)
    assert r.returncode == 1 and "not built" in r.stderr, r.stderr
    print("usage: bad combinations exit 2, an unknown transport exits 1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precopy", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="precopy-bridge-") as tmp:
        for case in (case_usage, case_ok, case_tls, case_no_dest, case_src_dies,
                     case_not_a_bridge):
            case(a.precopy, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
