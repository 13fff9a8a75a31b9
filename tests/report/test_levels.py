"""The levels of the varied hyperparameters and the axes of the curve grids."""

from __future__ import annotations

from segtune.report import grid_axes, varied_levels
from segtune.report.data import TrialRecord


def test_curves_are_laid_out_by_the_pair_whose_grid_the_trials_fill():
    # a learning rate per optimizer fills 2 of the 4 optimizer x lr cells; optimizer x loss fills all 4
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
