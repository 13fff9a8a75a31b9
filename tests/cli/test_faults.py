"""Faults a user meets: a full disk, and garbage configs. Never a traceback, nothing lost."""

import resource
import signal
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from segtune.cli import main
from segtune.config import build_config, load_config
from segtune.errors import USER_ERRORS, ConfigError, DataError

from tests.conftest import tiny_tree


def _small_disk(limit_bytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@pytest.mark.slow
def test_full_disk_gives_a_clear_error(tmp_path):
    # files may grow to 16 KiB only: config.yaml fits, the checkpoint does not
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_tree()))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "segtune", "train", str(config), "--quiet", "--out", str(run)],
                          capture_output=True, text=True, preexec_fn=_small_disk(16 * 1024))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot write ") and "free disk space" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(run.glob(".*.tmp"))  # no half-written temporary file left behind
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "tiny"


SECTIONS = ["data", "model", "loss", "optimizer", "scheduler", "augment", "train", "seed", "name", "bogus"]
KEYS = ["name", "source", "lr", "epochs", "batch_size", "depth", "base", "patience", "train_fraction", "momentum",
        "gamma", "step_size", "n_aug", "precision", "device", "resize", "size", "n_classes", "plane", "spacing", "x"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=8), st.sampled_from(["adam", "sgd", "unet", "demo", "synthetic", "dice", "bf16"]),
                   st.lists(st.integers(-2, 300), max_size=3))
TREES = st.dictionaries(st.sampled_from(SECTIONS),
                        st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)), max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_random_configs_validate_or_fail_cleanly(tree):
    # any tree either validates or raises ConfigError naming a field; nothing else escapes.
    # A tree that validates resolves to a config that validates to itself again (as a run's
    # config.yaml is read back by evaluate, predict and resume).
    try:
        config = build_config(tree)
    except ConfigError as err:
        assert str(err).startswith("config: invalid config\n  ")
    else:
        assert build_config(config.to_dict()).to_dict() == config.to_dict()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["optimizer.lr=abc", "train.epochs=-1", "model.name=x", "loss.gamma=2",
                                 "data.source=folder", "train.device=cuda:x", "scheduler.name=cosine",
                                 "augment.n_aug=99", "=3", "seed=[1]"]), min_size=1, max_size=3))
@example(["scheduler.name=cosine"])  # the one valid override: it trains
def test_bad_overrides_exit_2_without_traceback(tmp_path_factory, capsys, overrides):
    config = tmp_path_factory.mktemp("c") / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0})))
    try:
        load_config(config, overrides)
    except USER_ERRORS as err:
        expected = f"error: {err}\n"  # a bad override: exit 2 with the same message, before any training
    else:
        expected = ""  # every override valid: the one-epoch training runs
    capsys.readouterr()
    code = main(["train", str(config), "--quiet", "--out", str(config.parent / "run"), "--set", *overrides])
    assert capsys.readouterr().err == expected
    assert code == (2 if expected else 0)
    assert (config.parent / "run" / "summary.json").exists() is not bool(expected)


@pytest.mark.slow
def test_full_disk_stops_a_study_consistently_and_the_rerun_loses_nothing(tmp_path):
    # files may grow to 1 MiB: the study database fits, a checkpoint of this U-Net (2 MB) does not
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({
        "name": "disk", "method": "grid", "space": {"loss.name": ["dice_ce", "dice"]},
        "base": tiny_tree(model={"name": "unet", "depth": 3, "base": 16},
                          train={"epochs": 1, "batch_size": 8, "patience": 0})}))
    command = [sys.executable, "-m", "segtune", "study", str(study), "--out", str(tmp_path / "st"), "--quiet"]
    proc = subprocess.run(command, capture_output=True, text=True, preexec_fn=_small_disk(1024 * 1024))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot write ") and "run the same command again" in proc.stderr

    import optuna

    stored = optuna.load_study(study_name="disk", storage=f"sqlite:///{tmp_path / 'st' / 'study.db'}")
    (trial,) = stored.trials  # the worker stopped at the first failure instead of failing every cell
    assert trial.state == optuna.trial.TrialState.FAIL and "free disk space" in trial.user_attrs["fail_reason"]

    assert main(command[3:]) == 0  # room again: the same command resumes (in this process: no limit here)
    states = sorted((t.state.name, t.params["loss.name"]) for t in stored.trials)
    assert states == [("COMPLETE", "dice"), ("COMPLETE", "dice_ce"), ("FAIL", trial.params["loss.name"])]


@pytest.mark.slow
def test_an_unwritable_run_directory_stops_a_study_and_the_rerun_loses_nothing(tmp_path):
    # trials/ is a file, so no run directory can be made: the study stops at the first trial
    # (every later one would fail the same way) and runs it again once the directory is usable
    from tests.conftest import write_study

    from segtune.errors import StorageError
    from segtune.study import run_study

    path, out = write_study(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "trials").write_text("in the way")
    with pytest.raises(StorageError, match=r"(?s)cannot write the run directory .*the study stopped at trial 0"):
        run_study(path, study_dir=out)
    (out / "trials").unlink()
    trials = run_study(path, study_dir=out).get_trials()
    states = sorted((t.state.name, t.params["optimizer.lr"]) for t in trials)
    assert states == [("COMPLETE", 0.001), ("COMPLETE", 0.01), ("FAIL", trials[0].params["optimizer.lr"])]


KILLED_WRITER = """
import io, os, signal, sys, torch
from segtune.training.checkpoint import save_atomic
path, where = sys.argv[1], sys.argv[2]
save_atomic({"model": {"w": torch.zeros(100_000)}, "meta": {"version": 0}}, path)  # the previous file
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_save, real_replace = torch.save, os.replace
def half_then_die(obj, f):  # the kill lands inside the write: half of the bytes are in the temporary file
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    f.flush()
    print(len(buf.getvalue()) // 2, flush=True)
    die()
def replace_then_die(src, dst):
    if where == "after rename":
        real_replace(src, dst)
    die()
torch.save = half_then_die if where == "mid-write" else real_save
os.replace = replace_then_die  # "after fsync": killed between os.fsync and the rename
save_atomic({"model": {"w": torch.ones(100_000)}, "meta": {"version": 1}}, path)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-write", "after fsync", "after rename"])
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_file_whole(tmp_path, where):
    # the writer kills itself at a known point inside segtune's atomic write of version 1 over version 0
    import torch

    from segtune.training.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    writer = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), where], capture_output=True, text=True)
    assert writer.returncode == -signal.SIGKILL, writer.stderr
    temps = list(tmp_path.glob(".last.pt.*.tmp"))
    version = 1 if where == "after rename" else 0  # the previous file until the rename, the new one after
    saved = load_checkpoint(path)
    assert saved["meta"]["version"] == version and torch.equal(saved["model"]["w"], torch.full((100_000,), version))
    if where == "after rename":
        assert temps == []  # the temporary file became last.pt
        return
    (temp,) = temps  # the interrupted write did happen, into the temporary file
    if where == "mid-write":
        assert temp.stat().st_size == int(writer.stdout) > 0
        with pytest.raises(DataError, match="not a readable checkpoint"):
            load_checkpoint(temp)
    else:  # whole and fsynced, only not renamed yet
        assert load_checkpoint(temp)["meta"]["version"] == 1


SPACE_PATHS = ["optimizer.lr", "optimizer.name", "loss.name", "train.batch_size", "optimzer.lr", "model.depth",
               "data.train_fraction", "scheduler.name"]
SPACE_VALUES = st.one_of(VALUES, st.lists(VALUES, max_size=3),
                         st.fixed_dictionaries({"low": VALUES, "high": VALUES},
                                               optional={"log": st.booleans(), "step": VALUES}),
                         st.fixed_dictionaries({"when": st.sampled_from(SPACE_PATHS),
                                                "cases": st.dictionaries(st.text(max_size=5), VALUES, max_size=2)}))
def _mostly(valid, invalid=VALUES):
    """Valid values three times in four, so that the checks behind the first one get exercised."""
    return st.one_of(valid, valid, valid, invalid)


STUDIES = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "n_trials": _mostly(st.just(3)),
     "space": st.dictionaries(st.sampled_from(SPACE_PATHS), SPACE_VALUES, max_size=3)},
    optional={"method": _mostly(st.sampled_from(["grid", "tpe", "random", {"name": "tpe", "n_startup_trials": 2}])),
              "pruner": _mostly(st.fixed_dictionaries(
                  {"name": st.sampled_from(["hyperband", "median", "successive_halving", "none", "x"])},
                  optional={"min_epochs": VALUES, "reduction_factor": VALUES})),
              "repeats": _mostly(st.integers(1, 3)),
              "objective": _mostly(st.sampled_from(["val.dice_mean", "test.loss", "val.dice_per_class.a", "val.x"])),
              "set": _mostly(st.dictionaries(st.sampled_from(SPACE_PATHS), VALUES, max_size=2))})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@pytest.mark.slow
@given(STUDIES)
@example({"name": "fuzz", "n_trials": 3, "space": {"optimizer.lr": [0.001, 0.01]}})  # a valid file
@example({"name": "fuzz", "n_trials": 3, "space": {"optimzer.lr": [0.001]}})  # a misspelt path
def test_random_study_files_fail_with_a_message_not_a_traceback(tmp_path, capsys, tree):
    # `segtune study status` validates the whole study file first: a bad one exits 2 with the
    # problem load_study names; a good one exits 2 saying the study has not run yet. Nothing else escapes.
    from segtune.study.spec import load_study

    tree.setdefault("base", tiny_tree())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        load_study(path)
    except USER_ERRORS as err:
        expected = f"error: {err}\n"
    else:
        expected = (f"error: no study 'fuzz' yet: {tmp_path / 'nowhere' / 'study.db'} does not exist; "
                    f"run `segtune study {path}` first\n")
    capsys.readouterr()
    assert main(["study", "status", str(path), "--out", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == expected
