"""Fixtures of the report tests: one real tiny run, and a study with known objective values.

The study is written straight into an Optuna storage with known objective values per seed (so
the expected verdicts are known), its run directories copies of the one real tiny training run.
"""

from __future__ import annotations

import shutil
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from segtune.config import build_config
from segtune.report import write_report
from segtune.training.loop import train
from tests.conftest import tiny_tree

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"optimizer.name": ["adam", "sgd"], "scheduler.name": ["none", "cosine"]}
# (optimizer, scheduler, state, objective per seed): trial 1 is within the noise of trial 0,
# trial 2 is clearly worse, trial 3 was pruned and trial 4 failed
TRIALS = [
    ("adam", "none", TrialState.COMPLETE, {0: 0.80, 1: 0.82, 2: 0.81}),
    ("adam", "cosine", TrialState.COMPLETE, {0: 0.805, 1: 0.815, 2: 0.809}),
    ("sgd", "none", TrialState.COMPLETE, {0: 0.60, 1: 0.625, 2: 0.61}),
    ("sgd", "cosine", TrialState.PRUNED, {}),
    ("sgd", "cosine", TrialState.FAIL, {}),
]


def _metrics_csv(path, final: float) -> None:
    rows = ["epoch,train_loss,val_loss,val_dice_mean,lr,seconds"]
    rows += [f"{e},{1.5 - 0.2 * e},{1.6 - 0.15 * e},{final * e / 3},{0.01 / e},0.1" for e in (1, 2, 3)]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory):
    """One real tiny training run (config.yaml, metrics.csv, summary.json, best.pt)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(build_config(tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0})), out_dir=out, verbose=False)
    return out


def _make_study(study_dir, run_dir, trials) -> optuna.Study:
    study = optuna.create_study(study_name="known", storage=f"sqlite:///{study_dir / 'study.db'}",
                                direction="maximize")
    study.set_user_attr("spec", {"objective": "val.dice_mean", "repeats": 3, "method": {"name": "grid"},
                                 "space": SPACE, "base": tiny_tree()})
    dists = {k: CategoricalDistribution(v) for k, v in SPACE.items()}
    for number, (opt, sched, state, values) in enumerate(trials):
        params = {"optimizer.name": opt, "scheduler.name": sched}
        runs = []
        for seed in (values or {0: 0.3}):
            d = study_dir / "trials" / f"{number:04d}-seed{seed}"
            shutil.copytree(run_dir, d)
            _metrics_csv(d / "metrics.csv", values.get(seed, 0.3))
            if values:
                runs.append({"seed": seed, "value": values[seed], "epochs_run": 3, "best_epoch": 3,
                             "run_dir": str(d), "class_names": [], "test": {
                                 "loss": 1 - values[seed], "dice_mean": values[seed],
                                 "dice_per_class": {"background": 0.99, "disc": values[seed], "ring": 0.5}}})
        attrs = {"params": params, "runs": runs, "epochs": 3 if values else 1, "seconds": 12.0}
        if state == TrialState.FAIL:
            attrs["fail_reason"] = "TrainingDiverged: diverged at epoch 1"
        study.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions=dists, user_attrs=attrs,
            value=statistics.fmean(values.values()) if values else None,
            intermediate_values={} if values else {1: 0.3}))
    return study


@pytest.fixture
def make_study(run_dir):
    """``make_study(study_dir, n_trials=5)``: the first ``n_trials`` of TRIALS as segtune.study
    stores them, in ``study_dir/study.db``, their run directories copies of ``run_dir``."""
    return lambda study_dir, n_trials=len(TRIALS): _make_study(study_dir, run_dir, TRIALS[:n_trials])


@pytest.fixture(scope="package")
def study_report(tmp_path_factory, run_dir):
    """The folder of the known study's report, written once for the package."""
    study_dir = tmp_path_factory.mktemp("study")
    _make_study(study_dir, run_dir, TRIALS)
    html = write_report(study_dir)
    return html.parent
