#!/usr/bin/env python3
"""CPU and wall time of one durable commit of a group of five audit entries, four ways.

A diagnostic for the read journal (docs/benchmarks.md, "session 9"), not a benchmark figure:
it runs alone on an idle machine, in a scratch directory, with a bounded number of commits.

    python3 docs/bench/probes/journal-commit-cost.py [COMMITS] [SCRATCH_DIR]

1. SQLite in WAL mode with synchronous=FULL, the shipped journal's table (AUTOINCREMENT), five
   rows per transaction: what `journal.rs` does per group.
2. The same without AUTOINCREMENT.
3. The same with one row per group.
4. A plain file, already written once to its full length: one pwrite of the group, then
   fdatasync.
5. The same file opened O_DIRECT | O_DSYNC: one aligned 2 KiB write, no separate sync.

Per commit it prints wall time, this thread's CPU time, and the machine's busy time from
/proc/stat (all processors, so block-layer work done elsewhere counts too; 10 ms resolution).
"""
import mmap
import os
import sqlite3
import sys
import tempfile
import time

COMMITS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
SCRATCH = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="journal-probe-")
HZ = os.sysconf("SC_CLK_TCK")
ENTRY = os.urandom(330)  # about one sealed read entry
RAW_SIZE = 64 << 20


def machine_busy():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v) - v[3] - v[4]


def measure(name, state, commit):
    for i in range(50):
        commit(state)
    b0, w0, c0 = machine_busy(), time.perf_counter(), time.thread_time()
    for i in range(COMMITS):
        commit(state)
    b1, w1, c1 = machine_busy(), time.perf_counter(), time.thread_time()
    per = lambda x: x / COMMITS * 1e6
    print(
        f"{name:30s} wall {per(w1 - w0):7.1f} us  thread {per(c1 - c0):7.1f} us  "
        f"machine busy {per((b1 - b0) / HZ):7.1f} us per commit"
    )


def sqlite_journal(autoincrement):
    path = os.path.join(SCRATCH, f"journal-{autoincrement}.db")
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute(
        "CREATE TABLE journal (jseq INTEGER PRIMARY KEY"
        + (" AUTOINCREMENT" if autoincrement else "")
        + ", recorded INTEGER NOT NULL, entry BLOB NOT NULL, tags BLOB NOT NULL)"
    )
    return {"conn": c, "next": 0}


def five_rows(s):
    s["conn"].execute("BEGIN IMMEDIATE")
    rows = []
    for _ in range(5):
        s["next"] += 1
        rows.append((s["next"], 1, ENTRY, b"t" * 24))
    s["conn"].executemany("INSERT INTO journal VALUES (?, ?, ?, ?)", rows)
    s["conn"].execute("COMMIT")


def one_row(s):
    s["conn"].execute("BEGIN IMMEDIATE")
    s["next"] += 5
    s["conn"].execute("INSERT INTO journal VALUES (?, ?, ?, ?)", (s["next"], 1, ENTRY * 5, b"t" * 120))
    s["conn"].execute("COMMIT")


def raw_file(direct):
    path = os.path.join(SCRATCH, f"raw-{direct}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"\0" * RAW_SIZE)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(path, os.O_RDWR | (os.O_DIRECT | os.O_DSYNC if direct else 0))
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    buf.write(ENTRY * 5 + b"\0" * (4096 - len(ENTRY) * 5))
    return {"fd": fd, "off": 0, "buf": buf}


def buffered(s):
    os.pwrite(s["fd"], ENTRY * 5, s["off"])
    os.fdatasync(s["fd"])
    s["off"] = (s["off"] + len(ENTRY) * 5) % (RAW_SIZE - 4096)


def direct(s):
    os.pwritev(s["fd"], [memoryview(s["buf"])[:2048]], s["off"])
    s["off"] = (s["off"] + 2048) % (RAW_SIZE - 4096)


print(f"{COMMITS} commits each, scratch {SCRATCH}")
for _ in range(2):
    measure("sqlite, AUTOINCREMENT (shipped)", sqlite_journal(True), five_rows)
    measure("sqlite, plain rowid", sqlite_journal(False), five_rows)
    measure("sqlite, one row per group", sqlite_journal(False), one_row)
    measure("file, pwrite + fdatasync", raw_file(False), buffered)
    measure("file, O_DIRECT | O_DSYNC", raw_file(True), direct)
