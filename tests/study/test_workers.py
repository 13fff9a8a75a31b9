"""The worker loop: a grid covered once, a resumed study (its draws, its thread count, its study
file), studies across processes (two workers on one study, resume after SIGKILL, a PostgreSQL
storage) and bandit pruners. Tests that start processes or wait out a grace period are slow.

The PostgreSQL tests start their own server (initdb and pg_ctl on a temporary directory, a
loopback port) and are skipped only where no server binaries are installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from tests.conftest import run_killed_in_epoch, tiny_tree, unique_study_name, write_study

from segtune.errors import ConfigError
from segtune.study import leaderboard, load_existing_study, run_study, storage
from segtune.study.workers import gpu_assignment
from segtune.training.runtime import available_cpus
from segtune.training.threads import default_threads

TrialState = optuna.trial.TrialState


def _server_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = ([Path(found).resolve().parent] if found else []) + [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return next((d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)


PG_PASSWORD = "pg-s3cret"


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 for this test session, as the README writes it.

    The server asks for a password (scram-sha-256); the URL holds none: psycopg2 (libpq) reads it
    from PGPASSWORD, set for this session, as a user would.
    """
    bindir = _server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server (initdb, pg_ctl) on this machine; install the `postgresql` "
                    "system package (as .ci/run does) to run the PostgreSQL storage tests")
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install psycopg2-binary")
    as_user = {}
    root = Path(tempfile.mkdtemp(prefix="segtune-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user to run the PostgreSQL server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    (root / "pwfile").write_text(PG_PASSWORD)
    if as_user:
        os.chown(root / "pwfile", as_user["user"], as_user["group"])
    subprocess.run([bindir / "initdb", "-D", data, "-A", "scram-sha-256", "--pwfile", root / "pwfile", "-U", "segtune",
                    "--no-sync"], check=True, capture_output=True, **as_user)
    # 50 is plenty: a segtune worker holds at most 2 connections, and each test's own database
    # limits what its workers may open (fresh_database)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run([bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", options, "start"],
                   check=True, capture_output=True, **as_user)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGPASSWORD", PG_PASSWORD)
        yield f"postgresql://segtune@127.0.0.1:{port}/postgres"
    subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **as_user)
    shutil.rmtree(root, ignore_errors=True)


def fresh_database(postgres_url: str, *, workers: int) -> str:
    """A new database on the test server that refuses connections beyond segtune's rule: each
    worker process holds at most 2 (its trial, its heartbeat thread), the process that starts
    them 1 more. Its owner is no superuser, so PostgreSQL enforces the limit."""
    import psycopg2

    name = f"db_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(postgres_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'worker'")
        if cur.fetchone() is None:
            cur.execute(f"CREATE ROLE worker LOGIN PASSWORD '{PG_PASSWORD}'")  # PGPASSWORD
        cur.execute(f"CREATE DATABASE {name} OWNER worker CONNECTION LIMIT {2 * workers + 1}")
    conn.close()
    return postgres_url.replace("//segtune@", "//worker@").rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_worker_processes_share_one_study(tmp_path, backend, request):
    url = fresh_database(request.getfixturevalue("postgres_url"), workers=2) if backend == "postgresql" else None
    path = write_study(tmp_path, epochs=2, space={"optimizer.lr": [0.01, 0.003], "train.batch_size": [4, 8]},
                       name=unique_study_name())
    trials = run_study(path, study_dir=tmp_path / "out", storage=url, n_workers=2).get_trials()
    # every cell completes once, and both workers took part; on a machine so loaded that a
    # heartbeat comes later than the grace period, a trial is taken for dead and re-queued
    # (two workers asking at once can be given the same cell by Optuna's GridSampler: the later
    # trial waits for the earlier one and takes its result, "same_as", with no training)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
    assert all(t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs
               for t in trials if t.state != TrialState.COMPLETE)
    assert len({t.user_attrs["worker"] for t in complete}) == 2


@pytest.mark.slow
def test_two_workers_and_one_worker_give_the_same_value_per_cell(tmp_path, monkeypatch):
    # a study fixes its trials' thread count when created (here every CPU but one divided between 2
    # workers); the same count in one in-process worker gives every cell the same value
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the suite's 1 would fix the count
    path = write_study(tmp_path, epochs=2, space={"optimizer.lr": [0.01, 0.003], "train.batch_size": [4, 8]})
    two = run_study(path, study_dir=tmp_path / "two", n_workers=2)
    threads = two.user_attrs["threads"]
    assert threads == default_threads(available_cpus(), 2)  # its values: tests/training/test_threads.py
    one = run_study(path, study_dir=tmp_path / "one", n_workers=1, num_threads=threads)

    def values(study):
        trials = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
        assert all(t.user_attrs["config"]["train"]["num_threads"] == threads for t in trials)
        return {tuple(sorted(t.params.items())): t.value for t in trials}

    assert values(one) == values(two) and len(values(one)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_resume_after_a_worker_is_killed_mid_trial(tmp_path, backend, request):
    path = write_study(tmp_path, epochs=8, space={"optimizer.lr": [0.01, 0.003]},
                       heartbeat_interval=1, grace_period=2, name=unique_study_name())
    out = tmp_path / "out"
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    name = yaml.safe_load(path.read_text())["name"]
    # the worker kills itself in epoch 3 of trial 1, after trial 0 finished
    run_killed_in_epoch(3, ["study", str(path), "--worker", "--out", str(out)] + (["--storage", url] if url else []),
                        run_dir_prefix="0001-")
    resolved = storage.resolve(url) if url else f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name=name, storage=resolved).get_trials()
    assert [(t.state, sorted(t.intermediate_values)) for t in trials] == [
        (TrialState.COMPLETE, list(range(1, 9))), (TrialState.RUNNING, [1, 2])]
    (done_before,) = [t for t in trials if t.state == TrialState.COMPLETE]
    trials = run_study(path, study_dir=out, storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    died = [t for t in trials if t.state == TrialState.FAIL]
    # the finished trial is kept and not repeated; the killed one is failed and re-run once
    assert sorted(t.params["optimizer.lr"] for t in complete) == [0.003, 0.01]
    assert done_before.number in [t.number for t in complete]
    assert len(died) == 1 and "fail_reason" not in died[0].user_attrs
    assert died[0].params == next(t for t in complete if t.number != done_before.number).params


@pytest.mark.slow
def test_a_dead_trial_failed_without_its_retry_is_queued_again(tmp_path):
    # Optuna fails a stale trial, then queues its retry: a worker killed between the two steps
    # leaves a failed trial and no retry. The next worker queues it, so the grid loses no cell.
    from segtune.study import open_storage, open_study
    from segtune.study.spec import load_study

    path = write_study(tmp_path, epochs=2, space={"optimizer.lr": [0.01, 0.003]}, heartbeat_interval=1,
                       grace_period=2)
    spec, space = load_study(path)
    study = open_study(spec, space, open_storage(spec, tmp_path / "out"), seed=spec.seed)
    orphan = study.ask()
    lost = space.sample_grid(orphan)
    study.tell(orphan, state=TrialState.FAIL)  # failed, its retry not queued
    time.sleep(2.2)  # past the grace period: no other worker can still be queuing it
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optimizer.lr"] for t in complete) == [0.003, 0.01]
    retry = next(t for t in complete if t.params == orphan.params)
    assert retry.params == {"optimizer.lr": lost["optimizer.lr"]} and retry.system_attrs["retry_history"] == [0]
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    # the leaderboard says why trial 0 failed and where it ran again
    header, rows = leaderboard(optuna.load_study(study_name=spec.name, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}"))
    row = next(r for r in rows if r[0] == 0)
    assert row[header.index("state")] == "died"
    assert row[header.index("reason")] == f"its worker died (no heartbeat); run again as trial {retry.number}"


OPEN_AT = """
import sys
from segtune.study import open_storage
from segtune.study.spec import load_study
spec, _ = load_study(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # every process at the same instant: when all are ready
open_storage(spec, None, sys.argv[2])
"""


@pytest.mark.slow
def test_workers_starting_together_on_a_fresh_postgresql_database_all_open_it(tmp_path, postgres_url):
    # CREATE TABLE IF NOT EXISTS is not atomic in PostgreSQL: workers that set up Optuna's tables
    # at the same moment collide, and the loser must retry instead of dying
    url = fresh_database(postgres_url, workers=8)
    path = write_study(tmp_path, epochs=1, space={"optimizer.lr": [0.01]})
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(path), url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 8, [p.stderr.read()[-400:] for p in procs]
    for p in procs:
        p.stdin.write("go\n")
    for p in procs:
        p.stdin.flush()
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-400:] for err in errors]


@pytest.mark.slow
def test_a_worker_waits_for_a_held_schema_lock_no_longer_than_its_timeout(tmp_path, postgres_url, monkeypatch):
    # a worker that hangs holding the lock (here: a connection that took it and does nothing) must not
    # keep the others waiting for ever: they give up after the timeout, saying what to do
    import psycopg2

    from segtune.errors import StorageError
    from segtune.study import open_storage
    from segtune.study.spec import load_study

    url = fresh_database(postgres_url, workers=1)
    spec, _ = load_study(write_study(tmp_path, epochs=1, space={"optimizer.lr": [0.01]}))
    hung = psycopg2.connect(url)
    hung.autocommit = True
    with hung.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (storage.SCHEMA_LOCK,))
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)  # open_storage's retries: there must be none
    database = url.rsplit("/", 1)[1]
    with pytest.raises(StorageError) as caught:
        open_storage(spec, tmp_path, url, lock_timeout=0.5)
    message = str(caught.value)
    assert message.startswith(f"study storage {url}: waited 0.5 s for the lock with which segtune's workers set up "
                              f"Optuna's tables in database '{database}', and another connection still holds it")
    assert "pg_terminate_backend(pid)" in message and slept == []
    # the query the message gives finds the connection holding the lock
    holder = message.split("Find it with `", 1)[1].split("`", 1)[0]
    with hung.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
        cur.execute(holder)
        assert [row[0] for row in cur.fetchall()] == [pid]
    hung.close()  # the lock goes with its connection: the storage opens
    assert open_storage(spec, tmp_path, url, lock_timeout=0.5).engine.url.database == database


@pytest.mark.slow
def test_the_password_comes_from_pgpassword_or_pgpass_and_is_never_shown(tmp_path, postgres_url, monkeypatch,
                                                                         capsys):
    # the server asks for a password; the README's URL holds none
    from segtune.cli import main
    from segtune.study import open_storage
    from segtune.study.spec import load_study

    path = write_study(tmp_path, epochs=1, space={"optimizer.lr": [0.01]})
    spec, _ = load_study(path)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # open_storage's retries, not needed here
    open_storage(spec, tmp_path, postgres_url)  # PGPASSWORD, set by the fixture
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(ConfigError, match="(?s)no password supplied.*; check --storage .a password is read from "
                                          "PGPASSWORD or ~/.pgpass"):
        open_storage(spec, tmp_path, postgres_url)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:segtune:{PG_PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file that others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    open_storage(spec, tmp_path, postgres_url)
    # a wrong password in the URL: each command says the server refused it, and never shows it
    wrong = postgres_url.replace("segtune@", "segtune:Wr0ng-pw@")
    for command in (["study", str(path)], ["study", "status", str(path)], ["report", "--study", spec.name]):
        assert main(command + ["--storage", wrong]) == 2
        out, err = capsys.readouterr()
        assert "password authentication failed" in err and "segtune:***@127.0.0.1" in err
        assert "Wr0ng-pw" not in out + err


@pytest.mark.slow
def test_workers_get_the_storage_url_in_their_environment_not_on_their_command_line(tmp_path, postgres_url,
                                                                                  monkeypatch):
    # `ps` shows every user each process's command line; its environment only to its own user.
    # (test_two_worker_processes_share_one_study runs such workers for real.)
    import segtune.study.workers

    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("SEGTUNE_STORAGE", "sqlite:///elsewhere.db")  # a stale value is never passed on
    url = postgres_url.replace("segtune@", f"segtune:{PG_PASSWORD}@")  # the password in the URL itself
    started = []

    class Worker:
        def __init__(self, args, **kwargs):
            started.append((args, kwargs["env"]))

        def wait(self):
            return 0

    monkeypatch.setattr(segtune.study.workers.subprocess, "Popen", Worker)
    path = write_study(tmp_path, epochs=1, space={"optimizer.lr": [0.01, 0.003]}, name=unique_study_name())
    run_study(path, study_dir=tmp_path / "out", storage=url, n_workers=2)  # the parent opens it: the URL works
    run_study(path, study_dir=tmp_path / "sqlite", n_workers=2)
    assert len(started) == 4
    for argv, env in started:
        assert "--storage" not in argv and not any(PG_PASSWORD in str(a) for a in argv)
    assert [env.get("SEGTUNE_STORAGE") for _, env in started] == [url, url, None, None]


@pytest.mark.slow
def test_grid_runs_every_cell_once_and_a_rerun_repeats_nothing(tmp_path):
    path = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001], "train.batch_size": [4, 8]})
    study = run_study(path, study_dir=tmp_path / "out")
    trials = study.get_trials()
    cells = {(t.params["optimizer.lr"], t.params["train.batch_size"]) for t in trials}
    assert len(trials) == 4 and cells == {(0.01, 4), (0.01, 8), (0.001, 4), (0.001, 8)}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # the resolved config is stored on the trial, with the sampled values in it
    config = trials[0].user_attrs["config"]
    assert config["optimizer"]["lr"] == trials[0].params["optimizer.lr"]
    assert (tmp_path / "out" / "trials" / "0000-seed0" / "summary.json").exists()
    run_study(path, study_dir=tmp_path / "out")
    assert len(load_existing_study(path, study_dir=tmp_path / "out").get_trials()) == 4
    # leaderboard: best first
    header, rows = leaderboard(study)
    values = [r[header.index("val.dice_mean")] for r in rows]
    assert values == sorted(values, reverse=True)


@pytest.mark.slow
def test_a_changed_study_file_is_not_resumed_into_the_old_study(tmp_path):
    run_study(write_study(tmp_path, space={"optimizer.lr": [0.01]}), study_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="made from a different study file \\(space differ"):
        run_study(write_study(tmp_path, space={"optimizer.lr": [0.02]}), study_dir=tmp_path / "out")


@pytest.mark.slow
def test_a_resumed_study_trains_with_the_thread_count_it_was_created_with(tmp_path, monkeypatch, capsys):
    # the numbers depend on the thread count: a study keeps the count it was created with
    import segtune.study.objective
    from segtune.cli import main

    real_train = segtune.study.objective.train
    calls = []

    def stopped_after_one_trial(config, **kwargs):
        calls.append(config)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_train(config, **kwargs)

    path, out = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001]}), tmp_path / "out"
    monkeypatch.setattr(segtune.study.objective, "train", stopped_after_one_trial)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, study_dir=out, num_threads=1)
    monkeypatch.setattr(segtune.study.objective, "train", real_train)
    monkeypatch.setattr("segtune.study.workers.available_cpus", lambda: 8)  # another machine, or more cores free
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the suite's 1 would give a new count of 1 too
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    trials = load_existing_study(path, study_dir=out).get_trials()
    assert [t.user_attrs["config"]["train"]["num_threads"] for t in trials] == [1, 1, 1]  # done, stopped, re-run
    assert load_existing_study(path, study_dir=out).user_attrs["threads"] == 1
    assert main(["study", str(path), "--out", str(out), "--threads", "2"]) == 2
    assert ("trains every trial with 1 CPU thread(s), fixed when it was created: the numbers depend on the thread "
            "count") in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", {"name": "tpe", "n_startup_trials": 2}], ids=["random", "tpe"])
def test_a_resumed_study_draws_new_configurations_and_the_same_as_a_fresh_one(tmp_path, method):
    # trial n's draw depends on the study's seed and n only: a study stopped after 2 trials and
    # run again to 4 continues the sequence (no configuration twice) and ends where a study run
    # in one go ends
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    path = write_study(tmp_path, method=method, n_trials=2, seed=3, space=space)
    run_study(path, study_dir=tmp_path / "resumed")
    path.write_text(path.read_text().replace("n_trials: 2", "n_trials: 4"))
    resumed = run_study(path, study_dir=tmp_path / "resumed").get_trials()
    fresh = run_study(path, study_dir=tmp_path / "fresh").get_trials()
    lrs = [t.params["optimizer.lr"] for t in resumed]
    assert len(lrs) == 4 and len(set(lrs)) == 4 and not any("same_as" in t.user_attrs for t in resumed)
    assert lrs == [t.params["optimizer.lr"] for t in fresh]
    assert [t.value for t in resumed] == [t.value for t in fresh]


@pytest.mark.slow
def test_two_commands_on_one_study_split_its_trials(tmp_path):
    # two `segtune study` commands started together on one SQLite file draw different
    # configurations (each trial number its own draw): no configuration is trained twice
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    path = write_study(tmp_path, method="tpe", n_trials=4, seed=5, space=space)
    command = [sys.executable, "-m", "segtune", "study", str(path), "--out", str(tmp_path / "out"),
               "--quiet", "--threads", "1"]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = load_existing_study(path, study_dir=tmp_path / "out").get_trials()
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    lrs = [t.params["optimizer.lr"] for t in trained]
    # both may start their last trial at the same instant: at most one more than n_trials
    assert len(set(lrs)) == len(lrs) and 4 <= len(lrs) <= 5


@pytest.mark.parametrize("pruner", [{"name": "hyperband", "min_epochs": 1, "reduction_factor": 2},
                                    {"name": "successive_halving", "min_epochs": 1, "reduction_factor": 2}])
@pytest.mark.slow
def test_tpe_with_each_bandit_pruner_runs_its_trials(tmp_path, pruner):
    # TPE over a log range and a list, 4 trials of 3 epochs: every trial ends complete or pruned
    path = write_study(tmp_path, method={"name": "tpe", "n_startup_trials": 2}, n_trials=4, pruner=pruner,
                       space={"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}, "loss.name": ["dice_ce", "dice"]},
                       base=tiny_tree(train={"epochs": 3, "batch_size": 8, "patience": 0}))
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in trials)
    assert all(len(t.intermediate_values) in (1, 2, 3) for t in trials)


@pytest.mark.parametrize("n_workers, per_gpu, visible, expected", [
    (3, 1, [], [None, None, None]),                 # no GPU: every worker keeps the process's devices
    (4, 1, ["0", "1"], ["0", "1", "0", "1"]),       # more workers than GPUs: round again
    (4, 2, ["2", "5"], ["2", "2", "5", "5"]),       # two to a GPU, the visible GPUs' own names
])
def test_gpu_assignment(n_workers, per_gpu, visible, expected):
    assert gpu_assignment(n_workers, per_gpu, visible) == expected


def test_worker_processes_get_one_gpu_each_and_the_mapping_is_printed(tmp_path, monkeypatch, capsys):
    # a machine with 2 GPUs (as torch would count them), 4 workers, 2 to a GPU
    import segtune.study.workers

    started = []

    class Worker:
        def __init__(self, args, **kwargs):
            started.append(kwargs["env"])

        def wait(self):
            return 0

    monkeypatch.setattr(segtune.study.workers.subprocess, "Popen", Worker)
    monkeypatch.setattr(segtune.study.workers.torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = write_study(tmp_path, epochs=1, space={"optimizer.lr": [0.01, 0.003]})
    run_study(path, study_dir=tmp_path / "out", n_workers=4, workers_per_gpu=2)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["0", "0", "1", "1"]
    out = capsys.readouterr()
    assert "GPUs: worker 1 -> GPU 0, worker 2 -> GPU 0, worker 3 -> GPU 1, worker 4 -> GPU 1" in out.out
    assert "round again" not in out.err
    started.clear()
    run_study(path, study_dir=tmp_path / "out", n_workers=3, workers_per_gpu=1)  # 3 workers, 2 places
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["0", "1", "0"]
    assert "note: 3 workers on 2 GPU(s) at --workers-per-gpu 1: some GPUs get more than 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--workers-per-gpu must be at least 1, got 0"):
        run_study(path, study_dir=tmp_path / "out", n_workers=2, workers_per_gpu=0)


def test_omp_num_threads_sets_a_new_study_s_thread_count_and_threads_beats_it(monkeypatch):
    """`OMP_NUM_THREADS=N segtune study ...` trains at N threads, as a single run does; --threads wins."""
    import optuna

    from segtune.study.workers import study_threads

    monkeypatch.setattr("segtune.study.workers.available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert study_threads(optuna.create_study(), None, n_workers=1) == 3
    assert study_threads(optuna.create_study(), 2, n_workers=1) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: the default, every CPU but one among the workers
    monkeypatch.setattr("segtune.training.threads.torch_ceiling", lambda: 8)  # torch's own count there
    assert study_threads(optuna.create_study(), None, n_workers=2) == 3
