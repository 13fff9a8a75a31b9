"""Chaos: a study whose worker is killed with SIGKILL again and again loses and repeats nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import optuna
import pytest
from tests.conftest import write_study

from segtune.study import run_study, trial_reason

TrialState = optuna.trial.TrialState


def _snapshot(path, name):
    try:
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{path}").get_trials()
    except Exception:  # noqa: BLE001 - the study may not exist yet
        return {}
    return {t.number: (t.state, t.value, dict(t.params)) for t in trials}


@pytest.mark.slow
def test_five_kills_at_random_times_then_the_study_completes(tmp_path):
    lrs = [0.02, 0.01, 0.005, 0.003]
    # max_retry 10: the kills are the environment's fault, so a cell killed 4 times is still retried
    path = write_study(tmp_path, epochs=6, space={"optimizer.lr": lrs}, heartbeat_interval=1, grace_period=2,
                       max_retry=10)
    name = path.read_text().split("name: ")[1].split()[0]
    out, db = tmp_path / "out", tmp_path / "out" / "study.db"
    rng = random.Random(0)
    finished: dict[int, tuple] = {}
    for _ in range(5):
        worker = subprocess.Popen([sys.executable, "-m", "segtune", "study", str(path), "--worker", "--out", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        snap = _snapshot(db, name)
        # a trial finished before a kill is never changed by a later kill
        for number, record in finished.items():
            assert snap[number] == record
        finished.update({n: r for n, r in snap.items() if r[0] == TrialState.COMPLETE})
    time.sleep(2.5)  # past the grace period, so the last killed trial is seen as dead
    trials = run_study(path, study_dir=out).get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # every cell finished exactly once; the trials finished under fire kept their values
    assert sorted(t.params["optimizer.lr"] for t in complete) == sorted(lrs)
    for number, (_, value, params) in finished.items():
        assert trials[number].value == value and trials[number].params == params
    # every failed trial is a killed worker's trial, re-run with the same parameters (none, if it
    # was killed before it drew its cell), and says so
    for t in trials:
        if t.state == TrialState.FAIL:
            assert not t.params or any(c.params == t.params for c in complete)
            assert trial_reason(t, trials).startswith("its worker died (no heartbeat); run again as trial")
