"""CPU time and memory of process trees, read from /proc.

A server with worker processes spends CPU in its children, so every figure covers the process
and all its descendants (all threads of each, since /proc/<pid>/stat sums a process's threads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class _Stat:
    ppid: int
    own_ticks: int  # utime + stime of the process (all its threads)
    reaped_ticks: int  # cutime + cstime: children that exited and were waited for


def _read_stat(pid: int) -> _Stat | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14-17.
    return _Stat(
        ppid=int(fields[1]),
        own_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
    )


def _all_stats() -> dict[int, _Stat]:
    stats: dict[int, _Stat] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants (root first)."""
    children: dict[int, list[int]] = {}
    for pid, stat in _all_stats().items():
        children.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU (user + system) used so far by ``root``, its live descendants and its reaped children.

    Raises ProcessLookupError when ``root`` is gone, since a missing process would read as zero.
    """
    stats = _all_stats()
    if root not in stats:
        raise ProcessLookupError(f"process {root} is not running")
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    ticks = stats[root].reaped_ticks
    pending = [root]
    while pending:
        pid = pending.pop()
        ticks += stats[pid].own_ticks
        pending.extend(children.get(pid, ()))
    return ticks / _TICKS_PER_S


def tree_context_switches(root: int) -> int:
    """Context switches (voluntary + involuntary) so far of every thread of ``root`` and its live
    descendants. Threads that have exited are not counted; the servers' threads live as long as they do."""
    total = 0
    for pid in tree_pids(root):
        for status in (_PROC / str(pid) / "task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended between the listing and the read
            for line in lines:
                name, _, value = line.partition(":")
                if name.endswith("ctxt_switches"):  # voluntary_ and nonvoluntary_
                    total += int(value)
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        resident_pages = int((_PROC / str(pid) / "statm").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return resident_pages * _PAGE_BYTES


def tree_rss_bytes(root: int) -> dict[int, int]:
    """RSS of each process in the tree of ``root``."""
    return {pid: rss_bytes(pid) for pid in tree_pids(root)}


def machine_busy_seconds() -> float:
    """CPU time all CPUs of the machine spent busy (not idle or waiting for I/O), from /proc/stat."""
    first = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    if first[0] != "cpu":
        raise ValueError(f"unexpected first line of /proc/stat: {' '.join(first)}")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_S
