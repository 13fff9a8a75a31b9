"""Studies that lose nothing: a worker killed before its first heartbeat, a trial resumed from
its last.pt, a lost study database, a full disk under the storage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from tests.conftest import run_killed_in_epoch, write_study

from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study import leaderboard, load_existing_study, run_study

TrialState = optuna.trial.TrialState
pytestmark = pytest.mark.slow


FAST_DEATH = {"heartbeat_interval": 1, "grace_period": 2}  # a dead worker's trial is found stale in 2 s
TWO_LRS = {"optimizer.lr": [0.01, 0.003]}


DIES_AFTER_ASK = """
import os, signal, sys
from pathlib import Path
from segtune.study import open_storage, open_study
from segtune.study.spec import load_study

spec, space = load_study(sys.argv[1])
study = open_study(spec, space, open_storage(spec, Path(sys.argv[2])), seed=spec.seed)
study.ask()  # the trial is RUNNING in the storage; its worker dies before its first heartbeat
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_before_its_first_heartbeat_does_not_hang_the_study(tmp_path):
    path, out = write_study(tmp_path, epochs=2, space=TWO_LRS, **FAST_DEATH), tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", DIES_AFTER_ASK, str(path), str(out)])
    assert killed.returncode == -signal.SIGKILL
    (silent,) = optuna.load_study(study_name=yaml.safe_load(path.read_text())["name"],
                                  storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert silent.state == TrialState.RUNNING  # with no heartbeat row: Optuna never finds it stale
    # the same command finishes every cell (before, it waited for that trial forever)
    proc = subprocess.run([sys.executable, "-m", "segtune", "study", str(path), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    trials = load_existing_study(path, study_dir=out).get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials if t.state == TrialState.COMPLETE) == [0.003, 0.01]
    assert trials[0].state == TrialState.FAIL and not [t for t in trials if t.state == TrialState.RUNNING]
    header, rows = leaderboard(load_existing_study(path, study_dir=out))
    assert any(r[header.index("reason")].startswith("its worker died (no heartbeat); run again as trial")
               for r in rows)


def _trained_uninterrupted(tmp_path, path):
    other = tmp_path / "other.yaml"
    tree = yaml.safe_load(path.read_text())
    other.write_text(yaml.safe_dump({**tree, "name": tree["name"] + "-whole"}))
    (whole,) = run_study(other, study_dir=tmp_path / "whole", num_threads=1).get_trials()
    return whole


def test_a_trial_whose_worker_died_resumes_from_its_last_checkpoint(tmp_path):
    path, out = write_study(tmp_path, epochs=8, space={"optimizer.lr": [0.01]}, **FAST_DEATH), tmp_path / "out"
    # the worker kills itself in epoch 4, after its metrics row and before its last.pt
    run_killed_in_epoch(4, ["study", str(path), "--worker", "--out", str(out), "--threads", "1"], "0000")
    run_dir = out / "trials" / "0000-seed0"
    trials = run_study(path, study_dir=out, num_threads=1).get_trials()
    died, again = trials
    assert died.state == TrialState.FAIL and again.state == TrialState.COMPLETE
    # the re-run continued the killed run in its own directory, from the epoch of its last.pt
    assert again.user_attrs["home"] == 0 and again.user_attrs["runs"][0]["run_dir"] == str(run_dir)
    assert again.user_attrs["resumed_after"] == {"0": 3}
    assert not (out / "trials" / "0001-seed0").exists()
    # and ended with the numbers of a run that was never killed: its curve and its result
    whole = _trained_uninterrupted(tmp_path, path)
    assert again.intermediate_values == whole.intermediate_values
    assert again.value == whole.value
    assert again.user_attrs["runs"][0]["test"] == whole.user_attrs["runs"][0]["test"]
    # the report shows the run once, as the completed trial's (the died one's curve lives on in it)
    from segtune.report.data import trial_records

    records = {r.number: r for r in trial_records(load_existing_study(path, study_dir=out), study_dir=out)}
    assert records[again.number].run_dirs == [run_dir] and records[died.number].run_dirs == []


def test_a_trial_of_two_repeats_killed_in_its_second_keeps_the_first_and_resumes_the_second(tmp_path):
    path, out = write_study(tmp_path, epochs=5, space={"optimizer.lr": [0.01]}, repeats=2, **FAST_DEATH), tmp_path / "out"
    # killed in epoch 3 of the second repeat (seed 1), after the first finished
    run_killed_in_epoch(3, ["study", str(path), "--worker", "--out", str(out), "--threads", "1"], "0000-seed1")
    first = out / "trials" / "0000-seed0" / "summary.json"
    for run in ("0000-seed0", "0000-seed1"):  # as an older segtune wrote them: without a field added since
        config = out / "trials" / run / "config.yaml"
        tree = yaml.safe_load(config.read_text())
        del tree["train"]["max_minutes"]
        config.write_text(yaml.safe_dump(tree, sort_keys=False))
    finished_at = first.stat().st_mtime_ns
    died, again = run_study(path, study_dir=out, num_threads=1).get_trials()
    assert died.state == TrialState.FAIL and again.state == TrialState.COMPLETE
    assert first.stat().st_mtime_ns == finished_at  # the finished repeat is not trained again
    assert again.user_attrs["resumed_after"] == {"1": 2}
    whole = _trained_uninterrupted(tmp_path, path)
    assert [r["value"] for r in again.user_attrs["runs"]] == [r["value"] for r in whole.user_attrs["runs"]]
    assert again.intermediate_values == whole.intermediate_values and again.value == whole.value


def test_a_configuration_drawn_while_its_dead_twin_runs_waits_only_until_the_twin_is_found_dead(tmp_path):
    # a trial of lr 0.01 whose worker died after its last heartbeat; a new trial of the same
    # configuration waits for it, and must see it turn stale instead of waiting forever
    from segtune.study import open_storage, open_study
    from segtune.study.spec import load_study

    path, out = write_study(tmp_path, epochs=2, method="random", n_trials=1, space={"optimizer.lr": [0.01]},
                            **FAST_DEATH), tmp_path / "out"
    spec, space = load_study(path)
    storage = open_storage(spec, out)
    study = open_study(spec, space, storage, seed=spec.seed)
    twin = study.ask()
    twin.set_user_attr("params", space.sample(twin))
    twin_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec.name), twin.number)
    storage.record_heartbeat(twin_id)  # alive a moment ago: stale in grace_period (2 s)
    study.enqueue_trial({"optimizer.lr": 0.01})  # the next trial draws the same configuration
    proc = subprocess.run([sys.executable, "-m", "segtune", "study", str(path), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    trials = load_existing_study(path, study_dir=out).get_trials()
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE
    assert "same_as" not in trials[1].user_attrs  # it trained, once its twin was found dead


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_study_database_is_refused_instead_of_mixing_old_and_new_runs(tmp_path, damage, capsys):
    path, out = write_study(tmp_path, epochs=2, space=TWO_LRS, **FAST_DEATH), tmp_path / "out"
    run_study(path, study_dir=out)
    if damage == "deleted":
        (out / "study.db").unlink()
    else:
        (out / "study.db").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds 2 run directories of trials this study's storage does not have "
                                          r"\(0000-seed0, 0001-seed0\).*mv .*trials .*trials\.old"):
        run_study(path, study_dir=out)
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 2
    assert "run directories" in capsys.readouterr().err
    assert not (out / "trials" / "0000-seed0" / "summary.json").stat().st_size == 0  # nothing overwritten
    # following the advice: the old runs are moved aside, and the study runs every cell anew
    (out / "trials").rename(out / "trials.old")
    trials = run_study(path, study_dir=out).get_trials()
    assert sorted((t.state.name, t.params["optimizer.lr"]) for t in trials) == [("COMPLETE", 0.003),
                                                                                 ("COMPLETE", 0.01)]


def _mount_small_disk(where: Path, size: str) -> None:
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system (tmpfs) needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but for about ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)
    return filler


def test_a_full_disk_under_the_study_database_stops_the_study_and_loses_nothing(tmp_path):
    # study.db on a small disk that fills during the study; the run directories are elsewhere
    disk = tmp_path / "small"
    _mount_small_disk(disk, "4m")
    try:
        path, out = write_study(tmp_path, epochs=3, space={"optimizer.lr": [0.01, 0.003, 0.001]}, **FAST_DEATH), tmp_path / "out"
        storage = f"sqlite:///{disk / 'study.db'}"
        command = [sys.executable, "-m", "segtune", "study", str(path), "--out", str(out), "--quiet",
                   "--storage", storage]
        filler = None
        from segtune.study import open_storage, open_study
        from segtune.study.spec import load_study

        spec, space = load_study(path)
        open_study(spec, space, open_storage(spec, out, storage))  # the database exists, with its reserve
        assert (disk / ".study.db.reserve").stat().st_size == 1 << 20
        filler = _fill(disk, leave=16 * 1024)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
        # one error, exit 2, no traceback
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("error: ") == 1
        assert proc.stderr.startswith("error: cannot write the study storage: database or disk is full")
        stored = optuna.load_study(study_name=spec.name, storage=storage).get_trials()
        assert not [t for t in stored if t.state == TrialState.RUNNING]
        stopped = [t for t in stored if t.state == TrialState.FAIL]
        assert stopped and all("database or disk is full" in t.user_attrs["fail_reason"] for t in stopped)
        header, rows = leaderboard(optuna.load_study(study_name=spec.name, storage=storage))
        assert all(r[header.index("state")] == "failed" for r in rows if r[header.index("state")] != "complete")
        # room again: the same command runs every cell
        filler.unlink()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        trials = optuna.load_study(study_name=spec.name, storage=storage).get_trials()
        assert sorted(t.params["optimizer.lr"] for t in trials if t.state == TrialState.COMPLETE) == [0.001, 0.003,
                                                                                                     0.01]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_trial_stopped_by_ctrl_c_is_run_again_on_resume(tmp_path, monkeypatch):
    import segtune.study.objective

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    path = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001]})
    real_train = segtune.study.objective.train
    monkeypatch.setattr(segtune.study.objective, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, study_dir=tmp_path / "out")
    monkeypatch.setattr(segtune.study.objective, "train", real_train)
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["interrupted"] is True
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optimizer.lr"] for t in complete) == [0.001, 0.01]
    assert [t.user_attrs.get("requeued_from") for t in complete].count(stopped.number) == 1
