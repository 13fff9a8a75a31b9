"""The thread count: fixed by default (every CPU this process may use but one); with ``train.num_threads: auto``
the CPUs other processes leave free, from injected /proc/stat readings."""

from __future__ import annotations

import pytest
import torch

from segtune.training import threads
from segtune.training.threads import CpuReading, Threads, busy_seconds, free_threads

STAT = """cpu  900 0 300 5000 40 0 0 0 0 0
cpu0 500 10 100 2500 20 5 5 0 0 0
cpu1 400 0 200 2500 20 0 0 7 0 0
intr 12345 0 0
ctxt 999
"""


def test_busy_seconds_sums_user_nice_system_irq_softirq_steal_of_the_cpus_read():
    # cpu0: 500 + 10 + 100 + 5 + 5 + 0 = 620 ticks; cpu1: 400 + 200 + 7 (steal) = 607; idle and iowait not counted
    assert busy_seconds(STAT, None, 100) == (12.27, 2)
    assert busy_seconds(STAT, {1}, 100) == (6.07, 1)  # only the CPUs of the affinity mask
    assert busy_seconds(STAT, {5}, 100) is None  # none of them listed: no reading
    assert busy_seconds("cpu  1 2 3 4\n", None, 100) is None  # the total line alone is not per CPU


def _window(others: float, own: float, wall: float = 2.0, cpus: int = 2) -> tuple[CpuReading, CpuReading]:
    """Two readings ``wall`` seconds apart in which other processes kept ``others`` CPUs busy and this
    process ``own`` CPUs."""
    return CpuReading(100.0, 10.0, 50.0, cpus), CpuReading(100.0 + (others + own) * wall, 10.0 + own * wall,
                                                            50.0 + wall, cpus)


@pytest.mark.parametrize(("others", "own", "available", "cpus", "expected"), [
    (0.0, 2.0, 2, 2, 2),  # idle but for this process: every CPU
    (1.0, 1.0, 2, 2, 1),  # one busy process: the other CPU
    (0.67, 1.33, 2, 2, 1),  # a saturated machine shared 3 ways (2 of this process's threads + 1 busy)
    (0.4, 1.6, 2, 2, 2),  # light background work: 1.6 CPUs free rounds to 2
    (0.5, 1.5, 2, 2, 2),  # a half rounds up
    (5.0, 0.3, 2, 2, 1),  # heavily overloaded: never fewer than 1
    (1.0, 0.0, 2, 8, 2),  # 8 CPUs in the mask, 7 free, a quota of 2: the quota
])
def test_free_threads_are_the_cpus_read_less_the_busy_ones_of_other_processes(others, own, available, cpus,
                                                                             expected):
    assert free_threads(*_window(others, own, cpus=cpus), available) == expected


def test_free_threads_of_an_empty_window_are_all_available():
    reading = CpuReading(1.0, 1.0, 5.0, 2)
    assert free_threads(reading, reading, 2) == 2


@pytest.fixture
def two_threads(monkeypatch):
    """torch at 2 threads (as a user's script may set them) and no earlier reading; restored after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_last", None)
    monkeypatch.setattr(threads, "_set", None)
    monkeypatch.setattr(threads, "_ceiling", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class Machine:
    """Readings of a 2-CPU machine on which other processes keep ``others`` CPUs busy; the clock
    advances by each wait and each period's ``advance``."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall, self.others = 0.0, 0.0, 0.0, 0.0
        self.waits: list[float] = []

    def read(self) -> CpuReading:
        return CpuReading(self.busy, self.own, self.wall, 2)

    def advance(self, seconds: float, own: float = 0.0) -> None:
        self.busy += (self.others + own) * seconds
        self.own += own * seconds
        self.wall += seconds

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)


def _no_reading() -> CpuReading:
    pytest.fail("read the machine's load")


@pytest.mark.parametrize(("available", "prior", "expected"), [
    (2, 2, 1),  # every CPU this process may use but one
    (4, 4, 3),
    (1, 2, 1),  # an affinity mask or a quota of 1 CPU: at least 1
    (8, 2, 2),  # more CPUs than torch's count before the run (a script's own torch.set_num_threads(2))
    (2, 1, 1),
])
def test_the_default_is_fixed_at_every_cpu_available_but_one_and_never_reads_the_load(two_threads, monkeypatch,
                                                                                     available, prior, expected):
    from segtune.config import TrainConfig
    from segtune.training import runtime

    monkeypatch.setattr(threads, "read_cpu", _no_reading)  # the only reader of /proc/stat
    monkeypatch.setattr(runtime, "available_cpus", lambda: available)
    torch.set_num_threads(prior)
    _, governor = runtime.device_and_threads(TrainConfig(device="cpu"))
    assert governor.fixed == expected and torch.get_num_threads() == expected
    assert governor.adapt() == expected and governor.adapt() == expected  # the same count every period
    # a later run of the same process keeps it: segtune's own count does not lower the cap
    assert runtime.device_and_threads(TrainConfig(device="cpu"))[1].fixed == expected


def test_a_run_probes_at_its_start_and_follows_the_load_between_periods(two_threads):
    machine = Machine()
    machine.others = 1.0  # a busy process from the start
    governor = Threads("auto", 2, read=machine.read, wait=machine.wait)
    assert governor.start() == 1 and torch.get_num_threads() == 1
    assert machine.waits == [threads.PROBE_SECONDS]
    machine.advance(3.0, own=1.0)  # a period with the busy process still there
    assert governor.adapt() == 1
    machine.others = 0.0  # it ends
    machine.advance(3.0, own=1.0)
    assert governor.adapt() == 2 and torch.get_num_threads() == 2
    # the next run of this process starts from the last reading: no probe
    machine.advance(1.0)
    assert Threads("auto", 2, read=machine.read, wait=machine.wait).start() == 2
    assert machine.waits == [threads.PROBE_SECONDS]


def test_a_set_count_never_reads_the_machine_and_caps_follow_the_user(two_threads, monkeypatch):
    machine = Machine()
    machine.others = 1.0
    fixed = Threads(2, 2, read=_no_reading, wait=machine.wait)
    assert fixed.start() == 2 and fixed.adapt() == 2 and machine.waits == []
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the environment's own count fixes auto's too
    auto = Threads("auto", 2, read=_no_reading)
    assert auto.fixed == 2 and auto.start() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(1)  # a script's own torch.set_num_threads(1) caps auto: nothing to read
    assert Threads("auto", 2, read=_no_reading, wait=machine.wait).start() == 1


@pytest.mark.slow  # two trainings
def test_a_training_records_each_periods_threads_fixed_or_following_the_load(two_threads, monkeypatch, tmp_path):
    from segtune.config import build_config
    from segtune.training.loop import train

    from tests.conftest import tiny_tree

    windows = iter([1.0, 0.0, 0.0])  # the CPUs other processes keep busy: in the probe, periods 1 and 2
    machine = Machine()

    def read() -> CpuReading:  # each reading closes the window since the last one
        if machine.wall:
            machine.others = next(windows)
        machine.advance(1.0, own=0.5)
        return machine.read()

    monkeypatch.setattr(threads, "read_cpu", read)
    monkeypatch.setattr("segtune.training.runtime.available_cpus", lambda: 2)
    tree = tiny_tree(data={"source": "synthetic", "n_train": 8, "n_val": 4, "n_test": 4, "size": 16, "n_classes": 3},
                     train={"epochs": 2, "batch_size": 4, "patience": 0, "num_threads": "auto"})
    summary = train(build_config(tree), out_dir=tmp_path / "auto", verbose=False).summary
    # busy in the probe: 1 thread for period 1; idle in period 1: 2 threads for period 2
    assert summary["threads"] == {"fixed": None, "per_period": [1, 2]}
    monkeypatch.setattr(threads, "read_cpu", _no_reading)
    del tree["train"]["num_threads"]  # the default: every CPU but one, the same in every period
    summary = train(build_config(tree), out_dir=tmp_path / "default", verbose=False).summary
    assert summary["threads"] == {"fixed": 1, "per_period": [1, 1]}


@pytest.mark.parametrize(("available", "workers", "ceiling", "expected"), [
    (1, 1, 64, 1), (2, 1, 64, 1), (4, 1, 64, 3), (16, 1, 64, 15), (2, 2, 64, 1), (8, 2, 64, 3), (16, 4, 64, 3),
    (4, 8, 64, 1),
    (16, 1, 4, 4), (16, 2, 4, 2),  # torch's own count (a script's torch.set_num_threads(4)) caps it, then divided
])
def test_the_default_leaves_one_cpu_and_divides_the_rest_among_the_workers(monkeypatch, available, workers, ceiling,
                                                                            expected):
    monkeypatch.setattr(threads, "torch_ceiling", lambda: ceiling)
    assert threads.default_threads(available, workers) == expected
