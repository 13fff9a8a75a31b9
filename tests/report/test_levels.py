"""The levels of the varied hyperparameters and the axes of the curve grids."""

from __future__ import annotations

import pytest

from segtune.report import Levels, grid_axes, varied_levels
from segtune.study.records import TrialRecord


def _records(path, values):
    """One completed trial per value; None: a trial that did not sample ``path``."""
    return [TrialRecord(number=n, state="complete", params={} if v is None else {path: v}, values={0: 0.5},
                        value=0.5, epochs=1, seconds=1.0, reason="") for n, v in enumerate(values)]


def test_many_numeric_values_are_binned_in_quartiles_on_a_log_scale():
    # 7 learning rates spanning 1000x: 4 bins with log-spaced edges; a trial without the parameter is (base)
    records = _records("optimizer.lr", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, None])
    levels = Levels("optimizer.lr", records)
    assert levels.labels == ["0.0001–0.000548", "0.000548–0.003", "0.003–0.0173", "0.0173–0.1", "(base)"]
    assert [levels.of(r) for r in records] == ["0.0001–0.000548", "0.0001–0.000548", "0.000548–0.003",
                                               "0.000548–0.003", "0.003–0.0173", "0.0173–0.1", "0.0173–0.1", "(base)"]
    # few values are their own levels
    assert Levels("optimizer.lr", records[:3]).labels == ["0.0001", "0.0003", "0.001"]


@pytest.mark.parametrize("space, labels", [
    ({"optimizer.name": ["sgd", "adam"]}, ["sgd", "adam"]),  # the order of the study's list
    (None, ["adam", "sgd"]),                                 # else sorted
])
def test_categorical_levels_keep_the_order_of_the_space(space, labels):
    # loss.name took one value, so it is not varied
    records = [TrialRecord(number=n, state="complete", params={"optimizer.name": o, "loss.name": "dice"},
                           values={0: 0.5}, value=0.5, epochs=1, seconds=1.0, reason="")
               for n, o in enumerate(["sgd", "adam", "sgd"])]
    assert [(lv.path, lv.labels) for lv in varied_levels(records, space=space)] == [("optimizer.name", labels)]


def test_curves_are_laid_out_by_the_pair_whose_grid_the_trials_fill():
    # a learning rate per optimizer fills 2 of the 4 optimizer x lr cells; optimizer x loss fills all 4
    cells = [("adam", 3e-3, "dice_ce"), ("adam", 3e-3, "dice"), ("rmsprop", 1e-3, "dice_ce"), ("rmsprop", 1e-3, "dice")]
    records = [TrialRecord(number=n, state="complete", params={"optimizer.name": o, "optimizer.lr": lr, "loss.name": loss},
                           values={0: 0.5}, value=0.5, epochs=3, seconds=1.0, reason="")
               for n, (o, lr, loss) in enumerate(cells)]
    varied = varied_levels(records)
    rows, cols = grid_axes(varied, records=records)
    assert (rows.path, cols.path) == ("optimizer.name", "loss.name")
    # a layout given by name is kept as it is
    rows, cols = grid_axes(varied, layout=["optimizer.lr", "optimizer.name"], records=records)
    assert (rows.path, cols.path) == ("optimizer.lr", "optimizer.name")
