"""The study-efficiency benchmark's replay: studies run over a cache of curves, no training."""

from __future__ import annotations

import pytest

from benchmarks.study_efficiency import N_SEEDS, SPACE, Grid, Method, base_config, cell_key, judge, replay_study
from segtune.study.spec import parse_study

EPOCHS = 4


@pytest.fixture(scope="module")
def base() -> dict:
    return base_config(EPOCHS, 2, True, 1, [8, 16], 1)


@pytest.fixture(scope="module")
def cache(base) -> dict:
    """Every cell's curve rises linearly to its value; seed s adds 0.001 * s; sgd lr 0.1 with dice_ce is the best."""
    _, space = parse_study({"name": "g", "base": base, "method": "grid", "space": SPACE})
    out = {}
    for i, cell in enumerate(space.cells()):
        value = 0.9 if cell == {"optimizer.name": "sgd", "optimizer.lr": 0.1, "loss.name": "dice_ce"} else 0.3 + 0.01 * i
        for seed in range(N_SEEDS):
            final = value + 0.001 * seed
            out[cell_key(cell), seed] = {"cell": cell, "seed": seed, "value": final,
                                         "curve": [final * (e + 1) / EPOCHS for e in range(EPOCHS)],
                                         "epoch_seconds": [0.5] * EPOCHS}
    return out


def test_the_grid_is_the_mean_over_seeds(cache):
    grid = Grid(cache)
    assert len(grid.means) == 24
    assert grid.best == pytest.approx(0.901)  # 0.9 + the mean of 0, 0.001, 0.002
    assert grid.epochs == 24 * N_SEEDS * EPOCHS
    assert grid.seconds == pytest.approx(24 * N_SEEDS * EPOCHS * 0.5)


def test_an_unpruned_grid_study_trains_every_cell_once_and_answers_the_best(base, cache):
    replay = replay_study(Method("grid", "grid"), 0, base, cache, budget=10_000, n_trials=24)
    answer, epochs, trained = replay.at_budget(10_000)
    assert (epochs, trained) == (24 * EPOCHS, 24)
    assert answer == cell_key({"optimizer.name": "sgd", "optimizer.lr": 0.1, "loss.name": "dice_ce"})
    assert replay.seconds[-1] == pytest.approx(24 * EPOCHS * 0.5)


@pytest.mark.slow
def test_a_redrawn_configuration_costs_nothing(base, cache):
    # random draws the 24 cells with repeats; each is charged once, and the study ends at 24 distinct ones
    replay = replay_study(Method("random", "random"), 3, base, cache, budget=10_000, n_trials=24)
    assert replay.epochs[-1] == 24 * EPOCHS and replay.trained[-1] == 24
    assert len(replay.epochs) > 24


def test_repeats_charge_every_seed_and_a_pruner_charges_only_the_epochs_run(base, cache):
    repeated = replay_study(Method("r", "grid", "none", 3), 0, base, cache, budget=10_000, n_trials=24)
    assert repeated.epochs[-1] == 24 * N_SEEDS * EPOCHS
    pruned = replay_study(Method("p", "grid", {"name": "successive_halving", "min_epochs": 1}), 0, base, cache,
                          budget=10_000, n_trials=24)
    assert 24 < pruned.epochs[-1] < 24 * EPOCHS  # each cell ran at least its first epoch, not all its epochs


def test_the_answer_at_a_budget_is_the_best_trial_within_it(base, cache):
    replay = replay_study(Method("grid", "grid"), 0, base, cache, budget=3 * EPOCHS, n_trials=24)
    answer, epochs, trained = replay.at_budget(3 * EPOCHS)
    assert epochs <= 3 * EPOCHS and trained == epochs // EPOCHS
    assert answer in replay.answers


def test_judge_counts_the_seeds_whose_answer_is_within_tolerance(base, cache):
    verdict = judge(Method("grid", "grid"), Grid(cache), base, [0, 1], share=1.0, tolerance=0.01, n_trials=24)
    assert verdict.hits == 2 and verdict.gaps == [pytest.approx(0.0), pytest.approx(0.0)]
    assert verdict.shares == [pytest.approx(1 / N_SEEDS)] * 2  # one seed per cell: a third of the 3-seed grid
