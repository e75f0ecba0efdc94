#!/usr/bin/env python3
"""Wall time and CPU of one durable write of a few KiB, five ways.

A diagnostic for the read journal (docs/benchmarks.md, "session 11"), not a benchmark figure:
it runs alone on an idle machine, in a scratch directory, with a bounded number of writes.

    python3 docs/bench/probes/durable-write-cost.py [WRITES] [SCRATCH_DIR]

Each way rewrites one of 64 slots of a file already written to its full length (as the journal
does), WRITES times:

1. opened O_DIRECT | O_DSYNC, one aligned 4 KiB write (what `journal_file.rs` does per group);
2. opened O_DIRECT, the write, then fdatasync;
3. buffered, the write, then fdatasync;
4. buffered O_DSYNC;
5. as 1 with 8 KiB.

Per write it prints the wall time, this process's CPU time, and the machine's busy time from
/proc/stat (all processors, so block-layer work done elsewhere counts too; 10 ms resolution).
"""
import mmap
import os
import sys
import tempfile
import time

WRITES = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
SCRATCH = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="durable-write-probe-")
HZ = os.sysconf("SC_CLK_TCK")
SLOT = 16384
SLOTS = 64


def busy():
    """Busy clock ticks of all processors so far (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def probe(name, flags, size=4096, sync=None):
    path = os.path.join(SCRATCH, "probe")
    with open(path, "wb") as f:
        f.write(bytes(SLOT * SLOTS))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDWR | flags)
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT requires
    buf.write(os.urandom(size))
    data = memoryview(buf)
    try:
        for i in range(50):  # warm up
            os.pwrite(fd, data, (i % SLOTS) * SLOT)
        b0, c0, w0 = busy(), os.times(), time.perf_counter()
        for i in range(WRITES):
            os.pwrite(fd, data, (i % SLOTS) * SLOT)
            if sync:
                sync(fd)
        wall = time.perf_counter() - w0
        c1, b1 = os.times(), busy()
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    print(
        f"{name:34s} wall {wall / WRITES * 1e6:7.1f} us   process CPU {cpu / WRITES * 1e6:6.1f} us"
        f"   machine busy {(b1 - b0) / HZ / WRITES * 1e6:7.1f} us"
    )


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    print(f"{WRITES} writes each, in {SCRATCH}")
    probe("O_DIRECT | O_DSYNC, 4 KiB", os.O_DIRECT | os.O_DSYNC)
    probe("O_DIRECT, then fdatasync", os.O_DIRECT, sync=os.fdatasync)
    probe("buffered, then fdatasync", 0, sync=os.fdatasync)
    probe("buffered O_DSYNC", os.O_DSYNC)
    probe("O_DIRECT | O_DSYNC, 8 KiB", os.O_DIRECT | os.O_DSYNC, size=8192)


if __name__ == "__main__":
    main()
