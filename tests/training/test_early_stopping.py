"""EarlyStopping: the best value, the best epoch and the epoch at which a run stops."""

import math

import pytest

from segtune.training.early_stopping import EarlyStopping

NAN = float("nan")


@pytest.mark.parametrize("monitor, mode, patience, min_delta, values, stop_epoch, best_epoch", [
    # Dice (max): 0.3 at epoch 2 is never beaten; patience 2 stops two epochs later
    ("val.dice_mean", None, 2, 0.0, [0.2, 0.3, 0.3, 0.25, 0.9], 4, 2),
    # loss (min): falls every epoch, never stops
    ("val.loss", None, 2, 0.0, [1.0, 0.9, 0.8, 0.7], None, 4),
    # min_delta: gains of 0.005 do not count, so epoch 1 stays the best
    ("val.dice_mean", None, 3, 0.01, [0.5, 0.505, 0.51, 0.509], 4, 1),
    # a gain of more than min_delta counts and resets the count
    ("val.loss", None, 2, 0.1, [1.0, 0.95, 0.8, 0.79, 0.78], 5, 3),
    # patience 0: never stops, the best is still tracked
    ("val.dice_mean", None, 0, 0.0, [0.5, 0.4, 0.3, 0.2], None, 1),
    # NaN never improves: no best epoch at all
    ("val.mse", "min", 2, 0.0, [NAN, NAN, NAN], 2, 0),
    # explicit mode: a metric named otherwise, larger is better
    ("val.score", "max", 1, 0.0, [1.0, 2.0, 1.5], 3, 2),
])
def test_stop_epoch_and_best_epoch(monitor, mode, patience, min_delta, values, stop_epoch, best_epoch):
    stopping = EarlyStopping(monitor, mode=mode, patience=patience, min_delta=min_delta)
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        stopping.step(value, epoch=epoch)
        if stopping.stopped:
            stopped_at = epoch
            break
    assert stopped_at == stop_epoch
    assert stopping.best_epoch == best_epoch


def test_step_says_whether_the_value_is_a_new_best():
    stopping = EarlyStopping("val.loss")
    assert [stopping.step(v, epoch=e) for e, v in enumerate([0.5, 0.6, 0.4], start=1)] == [True, False, True]
    assert stopping.best == 0.4 and stopping.best_epoch == 3


def test_patience_counts_validations_not_epochs():
    # validated every 2 epochs with patience 2: two validations without a gain stop the run (4 epochs)
    stopping = EarlyStopping("val.dice_mean", patience=2)
    stopping.step(0.5, epoch=2)
    stopping.step(0.4, epoch=4)
    assert stopping.stale == 1 and not stopping.stopped
    stopping.step(0.4, epoch=6)
    assert stopping.stale == 2 and stopping.stopped and stopping.best_epoch == 2


def test_state_round_trips_through_a_checkpoint_dict():
    first = EarlyStopping("val.loss", patience=3)
    for epoch, value in enumerate([0.5, 0.4, 0.45], start=1):
        first.step(value, epoch=epoch)
    again = EarlyStopping("val.loss", patience=3)
    again.load_state_dict(first.state_dict())
    assert (again.best, again.best_epoch, again.stale, again.stopped) == (0.4, 2, 1, False)
    assert again.step(0.41, epoch=4) is False and again.step(0.42, epoch=5) is False and again.stopped


def test_before_any_value_nothing_is_best():
    assert EarlyStopping("val.dice_mean").best == -math.inf
    assert EarlyStopping("val.loss").best == math.inf


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'up'"):
        EarlyStopping("val.loss", mode="up")
