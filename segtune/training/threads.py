"""A run's CPU thread count: fixed by default, or following the load with ``train.num_threads: auto``.

The numbers of a CPU training depend on its thread count (the convolutions split their sums
differently), so by default a run trains with one fixed count, :func:`default_threads`: every CPU
this process may use but one (:func:`~segtune.training.runtime.available_cpus` less one, at least 1
and at most the count torch had before segtune first changed it), and the same config and seed
give the same numbers on the same machine. ``train.num_threads: N`` (or ``OMP_NUM_THREADS`` in the
environment) fixes another count.

On a CPU whose cores are busy with other work, every OpenMP barrier waits for the thread that the
system has descheduled, so more threads than free cores train slower than fewer: beside one busy
process, a team of every CPU trains at half the speed of one a CPU smaller, or less. The one CPU
the default leaves is for that other work (a browser, a second job); on an idle machine it costs
at most one CPU's share, less where the last thread adds little. With
``train.num_threads: auto`` (opt-in: a run's numbers then depend on the machine's load) a run
counts the CPU time that other processes took over a window (the busy time in ``/proc/stat`` of
the CPUs this process may use, less this process's own CPU time) and trains with the CPUs left, at
least 1 and at most every CPU: a short probe when it starts, then the window of each
period (an epoch, or the steps up to a validation), set between periods only.

- :func:`busy_seconds`: the busy CPU seconds of ``/proc/stat``'s per-CPU lines.
- :func:`free_threads`: the decision, from two readings (pure, for tests).
- :class:`Threads`: a run's thread count, fixed or following the load.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

__all__ = ["AUTO", "CpuReading", "Threads", "busy_seconds", "default_threads", "free_threads", "read_cpu",
           "torch_ceiling"]

AUTO = "auto"  # train.num_threads: follow the CPUs other processes leave free
PROBE_SECONDS = 0.1  # the window of a run's first decision, when no recent reading exists
RECENT_SECONDS = 30.0  # a reading this recent (the previous run of this process) starts the next window
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (guest time is in user)


@dataclass(frozen=True)
class CpuReading:
    """One reading: the busy CPU seconds of the ``cpus`` CPUs this process may use (all
    processes), this process's own CPU seconds, and the wall clock, all in seconds."""

    busy: float
    own: float
    wall: float
    cpus: int


def busy_seconds(stat: str, cpus: set[int] | None, ticks_per_second: float) -> tuple[float, int] | None:
    """The busy seconds of ``/proc/stat`` text over the CPUs ``cpus`` (None: all) and how many
    CPU lines it counted, or None when the text has none of them (not Linux, or a container that
    hides them)."""
    total, seen = 0, 0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()) or (cpus is not None and int(name[3:]) not in cpus):
            continue
        fields = rest.split()
        total += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
        seen += 1
    return (total / ticks_per_second, seen) if seen else None


def read_cpu() -> CpuReading | None:
    """A reading of this machine now, or None where ``/proc/stat`` cannot be read."""
    try:
        stat = Path("/proc/stat").read_text()
    except OSError:
        return None
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = busy_seconds(stat, cpus, os.sysconf("SC_CLK_TCK"))
    return None if busy is None else CpuReading(busy[0], time.process_time(), time.monotonic(), busy[1])


def free_threads(before: CpuReading, after: CpuReading, available: int) -> int:
    """The threads for the CPUs left free between two readings: the CPUs read less those other
    processes kept busy on average (their busy time less this process's own, over the wall time),
    rounded to the nearest (a half rounds up), at least 1 and at most ``available`` (a cgroup
    quota may give fewer CPUs than the affinity mask that was read).

    Example:
        >>> free_threads(CpuReading(0.0, 0.0, 0.0, 2), CpuReading(3.0, 1.0, 2.0, 2), 2)  # others: 1 CPU
        1
    """
    wall = after.wall - before.wall
    if wall <= 0:
        return available
    others = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
    return max(1, min(available, int(after.cpus - others + 0.5)))


_last: CpuReading | None = None  # this process's latest reading: the next run's window starts there
_set: int | None = None  # the count segtune last gave torch; another one was set by its user
_ceiling: int | None = None  # the most threads a run uses: torch's own count, before segtune's


def default_threads(available: int, workers: int = 1) -> int:
    """The default thread count of each of ``workers`` runs on ``available`` CPUs: every CPU but one, at
    most :func:`torch_ceiling`, divided among them, at least 1 (one thread has no barrier to wait at)."""
    return max(1, min(available - 1, torch_ceiling()) // workers)


def torch_ceiling() -> int:
    """The count torch had before segtune first changed it (a script's own ``torch.set_num_threads``
    after that counts again): the most threads a run uses."""
    global _ceiling
    if _ceiling is None or _set is None or torch.get_num_threads() != _set:
        _ceiling = torch.get_num_threads()
    return _ceiling


def environment_threads() -> int | None:
    """The count ``OMP_NUM_THREADS`` fixes, or None where it is unset or not a positive integer."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class Threads:
    """A run's CPU threads. ``setting`` is ``train.num_threads``: a count, fixed; None (the default),
    fixed at :func:`default_threads` of the CPUs this process may use (``available``) and at most the
    count torch had before segtune first changed it (a script's own ``torch.set_num_threads`` caps
    it); or ``"auto"``, the free CPUs of :func:`free_threads`, at most every CPU and that count, read
    again after each period.
    ``OMP_NUM_THREADS`` in the environment fixes the count of None and ``"auto"``.

    Args:
        setting: the configured count, None or ``"auto"``.
        available: the CPUs this process may use.
        read: the reading function, default :func:`read_cpu` (tests inject readings).
        wait: sleeps for the start's probe, default :func:`time.sleep`.

    Attributes:
        fixed: the count of every period; None with ``"auto"``, which follows the load.
        most: the most ``"auto"`` uses: every CPU, at most torch's count before segtune's.
    """

    def __init__(self, setting: int | Literal["auto"] | None, available: int, *,
                 read: Callable[[], CpuReading | None] | None = None,
                 wait: Callable[[float], None] | None = None) -> None:
        self.most = max(1, min(available, torch_ceiling()))
        environment = environment_threads()
        if isinstance(setting, int):
            self.fixed: int | None = setting
        elif environment is not None:
            self.fixed = environment
        else:
            self.fixed = default_threads(available) if setting is None else None
        self.read, self.wait = read or read_cpu, wait or time.sleep

    def start(self) -> int:
        """Set the first period's count (a probe of ``PROBE_SECONDS`` without a recent reading); returns it."""
        global _last
        if self.fixed is not None or self.most == 1:  # nothing to decide
            return self._apply(self.fixed or self.most)
        now = self.read()
        if now is not None and (_last is None or now.wall - _last.wall > RECENT_SECONDS):
            _last = now
            self.wait(PROBE_SECONDS)
            now = self.read()
        return self._decide(now)

    def adapt(self) -> int:
        """After a period: set the next one's count from the period's window; returns it."""
        if self.fixed is not None or self.most == 1:
            return self._apply(self.fixed or self.most)
        return self._decide(self.read())

    def _decide(self, now: CpuReading | None) -> int:
        global _last
        if now is None or _last is None:
            _last = now
            return self._apply(self.most)
        count = free_threads(_last, now, self.most)
        _last = now
        return self._apply(count)

    @staticmethod
    def _apply(count: int) -> int:
        global _set
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        _set = count
        return count
