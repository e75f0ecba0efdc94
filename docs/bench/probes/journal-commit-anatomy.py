#!/usr/bin/env python3
"""Where one read-journal commit's time goes, under load: the device and the kernel's hand-offs.

A diagnostic for the read journal (docs/benchmarks.md, "session 12"), not a benchmark figure.
Run it as root while a carevault server answers audited reads (for example during the audit-on
16-connection phase of `carevault-bench audit --connections 16`); it records for SECONDS:

    python3 docs/bench/probes/journal-commit-anatomy.py [SECONDS] [OUT_DIR]

It asks `perf` for four tracepoints on every processor: the journal thread's `pwrite64` entry
and exit, and the block layer's request issue and completion. A commit is one `pwrite64` of the
thread whose name starts with `carevault-audit` (the journal's writer, `O_DIRECT | O_DSYNC`). On
a disk with a write-back cache and no FUA, the block layer turns that write into the data write
(`WS`) and a flush (`FF`) it sends after the data completes, from the `kblockd` worker. The
probe splits each such commit into:

- entry to the data write's issue (the system call and the file system);
- the data write on the device;
- the data write's completion to the flush's issue (waiting for the block layer's worker);
- the flush on the device;
- the flush's completion to the system call's return (waking the journal thread).

Commits whose write carried other requests (an `M`, metadata, write: the file's time stamps,
about once a clock tick) are counted apart.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
OUT = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="journal-commit-probe-")
EVENTS = [
    "syscalls:sys_enter_pwrite64",
    "syscalls:sys_exit_pwrite64",
    "block:block_rq_issue",
    "block:block_rq_complete",
]
LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[\d+\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")


def record(path):
    args = ["perf", "record", "-a", "-o", path]
    for e in EVENTS:
        args += ["-e", e]
    subprocess.run(args + ["--", "sleep", str(SECONDS)], check=True, capture_output=True)
    return subprocess.run(
        ["perf", "script", "-i", path], check=True, capture_output=True, text=True
    ).stdout


def commits(text):
    """Each journal commit: (entry µs, [(µs, event, rwbs)], exit µs)."""
    out, cur = [], None
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, _tid, ts, event, rest = m.groups()
        t = float(ts) * 1e6
        if event.endswith("sys_enter_pwrite64") and comm.startswith("carevault-audit"):
            cur = (t, [])
        elif event.startswith("block:") and cur is not None:
            rwbs = rest.split()[1] if len(rest.split()) > 1 else "?"
            cur[1].append((t, event.split(":")[1], rwbs))
        elif event.endswith("sys_exit_pwrite64") and comm.startswith("carevault-audit"):
            if cur is not None:
                out.append((cur[0], cur[1], t))
            cur = None
    return out


def summary(name, values):
    v = sorted(values)
    if not v:
        print(f"{name:44} none")
        return
    print(
        f"{name:44} mean {statistics.mean(v):6.1f}  p50 {v[len(v) // 2]:6.1f}  "
        f"p90 {v[int(0.9 * len(v))]:6.1f} µs"
    )


def main():
    if os.geteuid() != 0:
        sys.exit("the probe needs root, for perf's tracepoints")
    found = commits(record(os.path.join(OUT, "commits.perf")))
    if not found:
        sys.exit("no journal commits seen: is a carevault server answering audited reads?")
    plain, with_meta = [], []
    phases = {k: [] for k in ("to data issue", "data write", "to flush issue", "flush", "to return")}
    for enter, events, leave in found:
        kinds = [rwbs for _, _, rwbs in events]
        if any("M" in k for k in kinds):
            with_meta.append(leave - enter)
            continue
        plain.append(leave - enter)
        if kinds[:4] == ["WS", "WS", "FF", "FF"] and [e for _, e, _ in events[:4]] == [
            "block_rq_issue",
            "block_rq_complete",
            "block_rq_issue",
            "block_rq_complete",
        ]:
            (t1, _, _), (t2, _, _), (t3, _, _), (t4, _, _) = events[:4]
            for k, d in zip(phases, (t1 - enter, t2 - t1, t3 - t2, t4 - t3, leave - t4)):
                phases[k].append(d)
    print(f"{len(found)} commits in {SECONDS:g} s ({len(found) / SECONDS:.0f} a second)")
    summary("commit, write and flush only", plain)
    summary(f"commit with a metadata write ({len(with_meta)})", with_meta)
    for k, v in phases.items():
        summary(f"  {k}", v)


if __name__ == "__main__":
    main()
