"""The run-time set-up: the CPUs a process may use, and the OpenMP wait policy set at import."""

from __future__ import annotations

import os
import subprocess
import sys


from segtune.training import runtime


def test_available_cpus_is_the_affinity_mask_capped_by_the_cgroup_quota(monkeypatch, tmp_path):
    # 4 CPUs in the mask, a quota of 1.5 CPUs (150000 us per 100000 us): 2 threads, not 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real(p))
    assert runtime.available_cpus() == 2
    cpu_max.write_text("max 100000\n")  # no quota: the mask
    assert runtime.available_cpus() == 4


def test_import_sets_a_passive_openmp_wait_unless_the_user_set_one():
    code = "import segtune, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
