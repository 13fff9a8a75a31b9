"""Study and run reports: statistics, contents, files, the command line, and the page in Chromium.

The study here is written straight into an Optuna storage with known objective values per seed
(so the expected verdicts are known), its run directories made from one real tiny training run.
"""

from __future__ import annotations

import csv
import re
import shutil
import statistics

import optuna
import pytest
import yaml
from tests.report.browser import find_chromium, render
from tests.conftest import tiny_tree
from optuna.distributions import CategoricalDistribution
from scipy import stats

from segtune.cli import main
from segtune.config import build_config
from segtune.report import write_report
from segtune.report.stats import mean_ci, paired_comparison
from segtune.training.loop import train

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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real tiny training run (config.yaml, metrics.csv, summary.json, best.pt)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(build_config(tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0})), out_dir=out, verbose=False)
    return out


def make_study(study_dir, run_dir, trials=TRIALS) -> optuna.Study:
    """A study as segtune.study stores it, its run directories copies of ``run_dir``."""
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


@pytest.fixture(scope="module")
def study_report(tmp_path_factory, run_dir):
    """The report of the known study, written once for the module."""
    study_dir = tmp_path_factory.mktemp("study")
    make_study(study_dir, run_dir)
    html = write_report(study_dir)
    return html.parent


def test_mean_ci_is_the_t_interval():
    values = [0.80, 0.82, 0.81, 0.79]
    ci = mean_ci(values)
    low, high = stats.t.interval(0.95, 3, loc=statistics.fmean(values), scale=stats.sem(values))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    # one value: the interval is unknown, not zero
    assert mean_ci([0.5]).low is None and mean_ci([0.5]).text() == "0.5000"


@pytest.mark.parametrize("other, within_noise", [
    ({0: 0.805, 1: 0.815, 2: 0.809}, True),   # differences -0.005, +0.005, +0.001: noise
    ({0: 0.60, 1: 0.625, 2: 0.61}, False),    # about 0.2 lower on every seed
])
def test_paired_comparison_says_when_the_difference_is_noise(other, within_noise):
    best = {0: 0.80, 1: 0.82, 2: 0.81}
    assert paired_comparison(best, other, other_number=1).within_noise is within_noise
    # fewer than two shared seeds: no comparison
    assert paired_comparison(best, {5: 0.1}, other_number=1) is None


def test_study_report_answers_with_the_noise_and_lists_every_trial(study_report):
    md = (study_report / "report.md").read_text()
    # the best, with its interval, and no crowned winner over trial 1 (within the noise)
    assert "**Best: trial 0**" in md and "0.8100 ± 0.0248" in md
    assert "**No clear winner:** trial 1 differs from the best by less than the noise" in md
    assert "| 2 | 3 | 0.1983 | 0.1912 | 0.2055 |" in md and "best is better" in md
    # the leaderboard holds the pruned trial and the failed one with its reason
    assert "| pruned |" in md and "TrainingDiverged: diverged at epoch 1" in md
    # final test metrics per class, mean over seeds
    assert "| trial | optimizer.name | scheduler.name | test loss | test Dice (mean) | Dice disc | Dice ring |" in md
    assert "| 0 | adam | none | 0.1900 | 0.8100 | 0.8100 | 0.5000 |" in md
    # the pivot table of the two hyperparameters, and importances
    assert "| optimizer.name \\ scheduler.name | none | cosine |" in md
    # a cell whose only finished trial was pruned shows where it stopped, not a blank
    assert re.search(r"\| sgd \| 0\.6117 ± [0-9.]+ \| pruned at epoch 1: 0\.3000 \|", md)
    assert "| fANOVA |" in md or "fANOVA" in md
    for name in ("leaderboard", "marginals", "importance", "loss", "dice", "lr", "predictions"):
        assert (study_report / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert f"](figures/{name}.png)" in md


def test_study_report_html_is_self_contained(study_report):
    html = (study_report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(list((study_report / "figures").glob("*.png")))
    assert 'src="figures/' not in html and "http://" not in html and "https://" not in html


def test_trials_csv_has_every_trial_with_its_interval(study_report):
    with open(study_report / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["state"] for r in rows] == ["complete", "complete", "complete", "pruned", "failed"]
    assert float(rows[0]["ci95_low"]) < 0.81 < float(rows[0]["ci95_high"])
    with open(study_report / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 9  # 3 completed trials x 3 seeds


def test_a_single_run_gets_curves_and_predictions(run_dir, tmp_path):
    html = write_report(run_dir, out=tmp_path / "r")
    md = (html.parent / "report.md").read_text()
    assert "| mean (foreground) |" in md
    assert {p.stem for p in (html.parent / "figures").glob("*.png")} == {"loss", "dice", "lr", "predictions"}


def test_cli_report_of_a_study_too_small_for_importances(tmp_path, run_dir, capsys):
    make_study(tmp_path, run_dir, trials=TRIALS[:1])
    assert main(["report", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report' / 'report.html'}" in capsys.readouterr().out
    # a sentence instead of importances
    assert "Importances need at least 3 completed trials" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--layout", "optimizer.lr"], r"optimizer.lr is not varied\); the varied hyperparameters are optimizer.name, "
                                   "scheduler.name"),
    (["--study", "nope"], "no study 'nope' in the storage; it holds: known"),
])
def test_cli_report_errors_name_the_fix(study_report, tmp_path, capsys, args, message):
    assert main(["report", str(study_report.parent), "--out", str(tmp_path), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_cli_report_from_a_storage_url_and_a_study_name(study_report, tmp_path):
    # the form for a study on a server: --storage URL --study NAME (here the same SQLite file)
    url = f"sqlite:///{study_report.parent / 'study.db'}"
    assert main(["report", "--storage", url, "--study", "known", "--out", str(tmp_path / "r")]) == 0
    assert "**Best: trial 0**" in (tmp_path / "r" / "report.md").read_text()


def test_cli_report_of_a_folder_that_is_neither_study_nor_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no study.db here" in capsys.readouterr().err


@pytest.mark.slow
def test_segtune_study_writes_its_report_at_the_end(tmp_path, capsys):
    study = {"name": "one", "base": tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0}),
             "method": "grid", "space": {"optimizer.lr": [0.01]}}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert f"report: {tmp_path / 'out' / 'report' / 'report.html'}" in capsys.readouterr().out
    assert "**Best: trial 0**" in (tmp_path / "out" / "report" / "report.md").read_text()


def test_report_renders_in_chromium_with_no_errors(study_report):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium installed (.ci/run installs the Debian package chromium)")
    shot = study_report / "report.png"
    result = render(study_report / "report.html", shot, binary=binary)
    assert result["errors"] == []
    assert len(result["images"]) == 7 and all(done and width > 0 for done, width in result["images"])
    assert shot.stat().st_size > 10_000


def test_curves_are_laid_out_by_the_pair_whose_grid_the_trials_fill():
    # a learning rate per optimizer fills 2 of the 4 optimizer x lr cells; optimizer x loss fills all 4
    from segtune.report import grid_axes, varied_levels
    from segtune.report.data import TrialRecord

    cells = [("adam", 3e-3, "dice_ce"), ("adam", 3e-3, "dice"), ("rmsprop", 1e-3, "dice_ce"), ("rmsprop", 1e-3, "dice")]
    records = [TrialRecord(number=n, state="complete", params={"optimizer.name": o, "optimizer.lr": lr, "loss.name": loss},
                           values={0: 0.5}, value=0.5, epochs=3, seconds=1.0, reason="")
               for n, (o, lr, loss) in enumerate(cells)]
    varied = varied_levels(records)
    rows, cols = grid_axes(varied, None, records)
    assert (rows.path, cols.path) == ("optimizer.name", "loss.name")
    # a layout given by name is kept as it is
    rows, cols = grid_axes(varied, ["optimizer.lr", "optimizer.name"], records)
    assert (rows.path, cols.path) == ("optimizer.lr", "optimizer.name")


@pytest.mark.slow
def test_cli_report_of_a_study_with_a_damaged_best_pt_reports_the_rest(tmp_path, run_dir, capsys):
    # trial 0's best.pt cut in half: every trial is still reported, its predictions left out with a line saying why
    make_study(tmp_path, run_dir, trials=TRIALS[:2])
    damaged = tmp_path / "trials" / "0000-seed0" / "best.pt"
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 2])
    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"warning: {damaged}: not a readable checkpoint: the file is damaged (truncated?)" in err
    assert f"No predictions of trial 0: {damaged}: not a readable checkpoint" in md
    assert "**Best: trial 0**" in md and "| 1 | adam | cosine |" in md  # both trials in the leaderboard
    assert "the prediction of trial 1 (best.pt)" in md  # the other trial's panel
    assert "weights_only" not in out + err + md
