"""A process's wake-ups, counted from /proc: its threads' context switches.

A thread blocked in ``epoll_wait``/``poll``/a futex makes no syscall and
takes no CPU until something wakes it, and every wake-up is one context
switch (voluntary when it blocks again, involuntary when it was preempted).
So the sum over /proc/PID/task/*/status of both counts, taken twice, is how
often the process woke in between, without attaching to it: ``strace -p``
interrupts the very syscall it watches (a ``restart_syscall`` of its own)
and needs ptrace rights a CI container may lack. The CPU ticks (utime +
stime of /proc/PID/stat) are the second witness: a thread that spins on
non-blocking calls without being switched out still burns them.
"""

from __future__ import annotations

import time
from pathlib import Path


def switches(pid: int) -> dict[str, int]:
    """Context switches so far, per thread: ``main`` (the thread whose id is the
    process's) and ``thread TID`` (Python threads all carry the process's name)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        values = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        name = "main" if task.name == str(pid) else f"thread {task.name}"
        out[name] = (int(values.get("voluntary_ctxt_switches", "0"))
                     + int(values.get("nonvoluntary_ctxt_switches", "0")))
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def over(pid: int, seconds: float) -> tuple[dict[str, int], int]:
    """Wake-ups per thread and CPU ticks spent during the next ``seconds``."""
    before, ticks = switches(pid), cpu_ticks(pid)
    time.sleep(seconds)
    after = switches(pid)
    return {name: n - before.get(name, 0) for name, n in after.items()}, cpu_ticks(pid) - ticks
