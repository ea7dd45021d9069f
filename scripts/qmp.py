# SPDX-License-Identifier: MIT
"""qmp.py - a small client of QEMU's machine protocol (QMP), for the
scripts that drive QEMU beside precopy (tests/qemu_bridge.py,
bench/vs_qemu.py). Import it after putting this folder on sys.path."""
import json
import socket
import time


class QMP:
    """QMP over a unix socket: one JSON object a line. Connects (retrying
    until @timeout seconds have passed, while QEMU comes up), reads the
    greeting (its QEMU version in .version) and negotiates capabilities.
    Events that arrive between commands are skipped."""

    def __init__(self, path, timeout=30, poll=0.05):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QMP socket {path} did not come up")
                time.sleep(poll)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError(f"not a QMP greeting: {greeting}")
        self.version = greeting["QMP"]["version"]["qemu"]
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        """Run command @name with @args; its "return", or RuntimeError."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            r = self._read()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def close(self):
        for f in (self.file, self.sock):
            try:
                f.close()
            except OSError:
                pass
