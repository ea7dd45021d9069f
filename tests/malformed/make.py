#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the hand-made malformed streams of tests/malformed/ and EXPECT.

Each stream is what a source would send on channel 0 after the TCP hello
(docs/PROTOCOL.md): transport frames carrying engine records and page
runs; or, in feed.h's multi-channel form, what it sends on each of
several channels. test_replay feeds each one to a destination with one
64 KiB region (tests/fuzz/feed.h) and checks that it is refused with an
error that mentions the text in EXPECT, and never reported as a success;
a stream whose text is "(verified)" must instead verify, with the memory
the destination then holds being the memory whose checksum it compared
(records sent after COMPLETE on another channel must change nothing).

    tests/malformed/make.py          # rewrite the .bin files and EXPECT
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "..", "fuzz", "corpus")
RAM = 64 * 1024
PAGES = RAM // 4096

FRAME_MSG, FRAME_PAGES, FRAME_BEAT = 0x50434D31, 0x50435031, 0x50434231
(HELLO, HELLO_ACK, RUNS, ITER_END, ITER_ACK, DEVSTATE, COMPLETE, RESULT, ERROR, HANDOFF,
 GO) = range(1, 12)
DATA, ZERO, FREE = 1, 2, 3
CAPS = 0b10111  # zero runs, checksums, free runs, the end in three steps


def frame(kind, payload=b"", region=0, off=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IIQQ", kind, region, off, n) + payload


def rec(rtype, payload, plen=None):
    return struct.pack("<HHI", rtype, 0, len(payload) if plen is None else plen) + payload


def msg(rtype, payload, plen=None):
    return frame(FRAME_MSG, rec(rtype, payload, plen))


def hello(regions=(RAM,), channels=1, page=4096, magic=b"PCPY", major=1, caps=CAPS):
    p = magic + struct.pack("<HHQIIII", major, 0, caps, page, len(regions), channels, 0)
    return msg(HELLO, p + b"".join(struct.pack("<Q", r) for r in regions))


def runs(it, entries):
    p = struct.pack("<II", it, len(entries))
    return msg(RUNS, p + b"".join(struct.pack("<IIQQ", *e) for e in entries))


def iter_end(it, chan=0):
    return msg(ITER_END, struct.pack("<II", it, chan))


def devstate(total, off, data):
    return msg(DEVSTATE, struct.pack("<QQII", total, off, len(data), 0) + data)


def complete(npages=PAGES, h=0, nregions=1):
    p = struct.pack("<II", nregions, 0) + struct.pack("<QQ", npages, h) * nregions
    return msg(COMPLETE, p)


def pages(off, data, region=0):
    return frame(FRAME_PAGES, data, region=region, off=off)


ZERO_ALL = runs(0, [(0, ZERO, 0, PAGES)])


def multi(pieces, nchan=2):
    """feed.h's multi-channel form: [(channel, bytes), ...] in write order."""
    out = b"PCFM" + bytes([nchan - 2])
    for chan, data in pieces:
        for i in range(0, max(len(data), 1), 65535):
            part = data[i:i + 65535]
            out += struct.pack("<BH", chan, len(part)) + part
    return out


def split_multi(b):
    """The per-channel streams of a multi-channel input."""
    nchan = 2 + b[4] % 3
    streams = [b""] * nchan
    i = 5
    while i + 3 <= len(b):
        chan, n = struct.unpack_from("<BH", b, i)
        streams[chan % nchan] += b[i + 3:i + 3 + n]
        i += 3 + n
    return streams


def frames_of(b):
    """(offset, kind, length, record type or 0) of each frame of a stream."""
    out, i = [], 0
    while i + 24 <= len(b):
        kind, _, _, n = struct.unpack_from("<IIQQ", b, i)
        rt = struct.unpack_from("<H", b, i + 24)[0] if kind == FRAME_MSG and n >= 8 else 0
        out.append((i, kind, n, rt))
        i += 24 + n
    return out

CASES = {
    # name: (stream, text the error must mention)
    "empty": (b"", "handshake"),
    "half-frame-header": (b"PCM1\0\0\0", "handshake"),
    "hello-bad-magic": (hello(magic=b"XCPY"), "magic"),
    "hello-major-2": (hello(major=2), "version"),
    "hello-page-size-8k": (hello(page=8192), "page size"),
    "hello-two-regions": (hello(regions=(RAM, RAM)), "regions"),
    "hello-region-too-big": (hello(regions=(2 * RAM,)), "region 0"),
    "hello-says-two-channels": (hello(channels=2), "channels"),
    "hello-no-required-caps": (hello(caps=0b100), "capabilities"),
    "hello-no-three-step-end": (hello(caps=0b111), "capabilities"),
    "hello-zero-regions": (hello(regions=()), "regions"),
    "hello-length-lies": (frame(FRAME_MSG, rec(HELLO, b"PCPY", plen=4000)), "payload bytes"),
    "first-record-not-hello": (iter_end(0), "expected HELLO"),
    "second-hello": (hello() + hello(), "unexpected"),
    "message-frame-with-offset": (hello() + frame(FRAME_MSG, rec(ITER_END, b"\0" * 8), off=8),
                                  "region/offset"),
    "unknown-frame-kind": (hello() + frame(0x41414141, b""), "unknown frame"),
    "oversized-message": (hello() + frame(FRAME_MSG, length=2 << 20), "malformed"),
    "page-run-region-7": (hello() + pages(0, b"\1" * 4096, region=7), "not registered"),
    "page-run-offset-wraps": (hello() + pages((1 << 64) - 4096, b"\1" * 8192), "outside region"),
    "page-run-past-end": (hello() + pages(RAM - 4096, b"\1" * 8192), "outside region"),
    "page-run-empty": (hello() + pages(0, b""), "outside region"),
    "runs-wrong-pass": (hello() + runs(5, [(0, ZERO, 0, 1)]), "RUNS of pass"),
    "runs-count-zero": (hello() + msg(RUNS, struct.pack("<II", 0, 0)), "entries"),
    "runs-count-lies": (hello() + msg(RUNS, struct.pack("<II", 0, 1000)), "does not fit"),
    "runs-unknown-kind": (hello() + runs(0, [(0, 9, 0, 1)]), "unknown kind"),
    "runs-no-pages": (hello() + runs(0, [(0, ZERO, 0, 0)]), "no pages"),
    "runs-region-3": (hello() + runs(0, [(3, ZERO, 0, 1)]), "region 3"),
    "runs-page-count-wraps": (hello() + runs(0, [(0, ZERO, 2, (1 << 64) - 1)]), "outside region"),
    # work per record is bounded: a page at most once per RUNS record
    "runs-overlap": (hello() + runs(0, [(0, DATA, 0, PAGES), (0, DATA, 2, 1)]) + iter_end(0),
                     "overlap"),
    "runs-whole-region-1024-times": (hello() + runs(0, [(0, DATA, 0, PAGES)] * 1024)
                                     + iter_end(0), "overlap"),
    "iter-end-wrong-channel": (hello() + ZERO_ALL + iter_end(0, chan=1), "ITER_END"),
    "iter-end-wrong-pass": (hello() + ZERO_ALL + iter_end(3), "ITER_END"),
    "iter-ack-from-source": (hello() + msg(ITER_ACK, struct.pack("<I", 0)), "unexpected"),
    "result-from-source": (hello() + msg(RESULT, struct.pack("<iI", 0, 0)), "unexpected"),
    "error-from-source": (hello() + msg(ERROR, struct.pack("<iI", -5, 0) + b"disk on fire"),
                          "source gave up"),
    "record-reserved-bits": (hello() + frame(FRAME_MSG, struct.pack("<HHI", ITER_END, 1, 8)
                                             + b"\0" * 8), "reserved"),
    "devstate-gap": (hello() + ZERO_ALL + iter_end(0) + devstate(100, 0, b"a" * 10)
                     + devstate(100, 50, b"b" * 10), "device state piece"),
    "devstate-too-big": (hello() + ZERO_ALL + iter_end(0) + devstate(1 << 40, 0, b"a"),
                         "DEVICE_STATE"),
    "devstate-piece-past-total": (hello() + ZERO_ALL + iter_end(0) + devstate(4, 0, b"abcdefgh"),
                                  "DEVICE_STATE"),
    "devstate-incomplete-at-complete": (hello() + ZERO_ALL + iter_end(0)
                                        + devstate(100, 0, b"a" * 10) + complete(), "incomplete"),
    "complete-before-iter-end": (hello() + ZERO_ALL + complete(), "every channel"),
    "complete-two-regions": (hello() + ZERO_ALL + iter_end(0) + complete(nregions=2), "regions"),
    "complete-wrong-page-count": (hello() + ZERO_ALL + iter_end(0) + complete(npages=3), "pages"),
    "complete-without-pages": (hello() + iter_end(0) + complete(), "checksum mismatch"),
    "zero-runs-wrong-checksum": (hello() + ZERO_ALL + iter_end(0) + complete(h=12345),
                                 "checksum mismatch"),
    "ends-before-complete": (hello() + ZERO_ALL + iter_end(0), "closed"),
    "go-before-complete": (hello() + ZERO_ALL + msg(GO, b""), "unexpected GO"),
    "go-with-payload": (hello() + ZERO_ALL + iter_end(0) + msg(GO, b"\0" * 4), "GO of 4 bytes"),
    "heartbeat-with-length": (hello() + frame(FRAME_BEAT, b"\0" * 4), "heartbeat frame"),
    "heartbeat-with-offset": (hello() + frame(FRAME_BEAT, off=4096), "heartbeat frame"),
    # heartbeats are skipped: the stream gets as far as the checksum
    "heartbeats-then-wrong-checksum": (frame(FRAME_BEAT) + hello() + frame(FRAME_BEAT) + ZERO_ALL
                                       + frame(FRAME_BEAT) + iter_end(0) + complete(h=12345),
                                       "checksum mismatch"),
}


def from_seed():
    """Real streams, damaged: a flipped page byte, cuts before COMPLETE and GO."""
    out = {}
    path = os.path.join(SEEDS, "idle")
    if not os.path.exists(path):
        return out
    b = bytearray(open(path, "rb").read())
    i = 0
    frames = []
    while i < len(b):
        kind, _, _, n = struct.unpack_from("<IIQQ", b, i)
        frames.append((i, kind, n))
        i += 24 + n
    first_page = next(f for f in frames if f[1] == FRAME_PAGES)
    flipped = bytearray(b)
    flipped[first_page[0] + 24 + 100] ^= 0x01
    out["seed-idle-page-byte-flipped"] = (bytes(flipped), "checksum mismatch")
    def rtype(f):
        return struct.unpack_from("<H", b, f[0] + 24)[0] if f[1] == FRAME_MSG else 0
    comp = next(f for f in frames if rtype(f) == COMPLETE)
    go = next(f for f in frames if rtype(f) == GO)
    out["seed-idle-cut-before-complete"] = (bytes(b[:comp[0]]), "closed")
    # verified, but the source never says GO: the guest must not be resumed
    out["seed-idle-cut-before-go"] = (bytes(b[:go[0]]), "not resumed")
    out["seed-idle-result-instead-of-go"] = (bytes(b[:go[0]]) + msg(RESULT, struct.pack("<iI", 0, 0)),
                                             "expected GO")
    out["seed-idle-cut-mid-page"] = (bytes(b[:first_page[0] + 24 + 5000]), "closed")
    # records after COMPLETE on channel 0: only GO may follow
    cut, tail = bytes(b[:go[0]]), bytes(b[go[0]:])
    out["seed-idle-page-run-after-complete"] = (cut + pages(0, b"\xee" * 4096) + tail,
                                                "after the regions were revoked")
    out["seed-idle-iter-end-after-complete"] = (cut + iter_end(1) + tail, "expected GO")
    out["seed-idle-complete-twice"] = (cut + bytes(b[comp[0]:comp[0] + 24 + comp[2]]) + tail,
                                       "expected GO")
    # a page placed after its checksum was taken, before COMPLETE
    dev = next(f for f in frames if rtype(f) == DEVSTATE)
    out["seed-idle-page-run-after-its-checksum"] = (
        bytes(b[:dev[0]]) + pages(3 * 4096, b"\xee" * 4096) + bytes(b[dev[0]:]),
        "written after its checksum")

    # several channels: channel 1 after COMPLETE changes nothing
    path = os.path.join(SEEDS, "idle-2ch")
    if not os.path.exists(path):
        return out
    s0, s1 = split_multi(open(path, "rb").read())[:2]
    f0 = frames_of(s0)
    go0 = next(f for f in f0 if f[3] == GO)
    passes1 = sum(1 for f in frames_of(s1) if f[3] == ITER_END)
    before, after = s0[:go0[0]], s0[go0[0]:]
    out["seed-2ch-zero-runs-on-ch1-after-complete"] = (
        multi([(1, s1), (0, before), (1, runs(passes1, [(0, ZERO, 0, PAGES)])), (0, after)]),
        "(verified)")
    out["seed-2ch-page-run-on-ch1-after-complete"] = (
        multi([(1, s1), (0, before), (1, pages(0, b"\xee" * 4096)), (0, after)]),
        "(verified)")
    out["seed-2ch-iter-end-on-ch1-after-complete"] = (
        multi([(1, s1), (0, before), (1, iter_end(passes1, chan=1)), (0, after)]),
        "(verified)")
    return out


def main():
    cases = dict(CASES)
    cases.update(from_seed())
    for f in os.listdir(HERE):
        if f.endswith(".bin"):
            os.unlink(os.path.join(HERE, f))
    with open(os.path.join(HERE, "EXPECT"), "w") as ex:
        ex.write("# file<TAB>text the destination's error must contain (tests/malformed/make.py)\n")
        for name, (data, text) in sorted(cases.items()):
            with open(os.path.join(HERE, name + ".bin"), "wb") as f:
                f.write(data)
            ex.write(f"{name}.bin\t{text}\n")
    print(f"{len(cases)} streams in {HERE}")


if __name__ == "__main__":
    main()
