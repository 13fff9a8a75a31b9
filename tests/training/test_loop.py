"""The training loop: run directory, early stopping, checkpoints, determinism, divergence."""

import csv
import json

import pytest
import torch
import yaml

from segtune.training.checkpoint import load_checkpoint, model_from_checkpoint
from segtune.config import build_config
from segtune.errors import ConfigError, SegtuneError, TrainingDiverged
from segtune.training.evaluate import evaluate_split
from segtune.training.loop import train
from segtune.training.runtime import load_data

from tests.conftest import tiny_tree


def test_run_directory_contents(tiny_config, tmp_path):
    result = train(tiny_config, out_dir=tmp_path / "run", verbose=False)
    run = result.run_dir
    assert {"config.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    # the resolved config re-validates to the same values
    assert build_config(yaml.safe_load((run / "config.yaml").read_text())).to_dict() == tiny_config.to_dict()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_dice_mean", "val_dice_class_1", "val_dice_class_2", "lr", "seconds"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["stopped_early"] is False and summary["stopped"] is None
    assert summary["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows))
    assert summary["seconds"] >= summary["train_seconds"]  # the set-up besides the epochs
    assert set(summary["test"]["dice_per_class"]) == {"background", "class_1", "class_2"}
    fg = [summary["val"]["dice_per_class"][k] for k in ("class_1", "class_2")]
    assert summary["val"]["dice_mean"] == pytest.approx(sum(fg) / 2)
    # the train Dice of the training batches: the foreground mean per epoch, the best epoch's in the summary
    for r in rows:
        assert float(r["train_dice_mean"]) == pytest.approx((float(r["train_dice_class_1"])
                                                             + float(r["train_dice_class_2"])) / 2)
    assert summary["train_dice_mean"] == pytest.approx(float(rows[summary["best_epoch"] - 1]["train_dice_mean"]))
    assert summary == result.summary


def test_tensorboard_events_hold_the_curves(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config, out_dir=tmp_path / "run", verbose=False).run_dir
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/loss", "val/loss", "val/dice_mean", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/dice_mean")] == [1, 2]


def test_same_seed_same_numbers(tmp_path):
    cfg = build_config(tiny_tree(), ["augment.name=combine", "data.train_fraction=0.5"])
    a = train(cfg, out_dir=tmp_path / "a", verbose=False)
    b = train(cfg, out_dir=tmp_path / "b", verbose=False)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.summary["test"] == b.summary["test"]
    c = train(build_config(tiny_tree(), ["augment.name=combine", "data.train_fraction=0.5", "seed=1"]),
              out_dir=tmp_path / "c", verbose=False)
    assert [r["train_loss"] for r in c.history] != [r["train_loss"] for r in a.history]


def test_early_stopping_rule(tmp_path):
    # lr so small nothing improves by min_delta: best is epoch 1, stops after `patience` stale epochs
    cfg = build_config(tiny_tree(), ["optimizer.lr=1e-9", "train.epochs=20", "train.patience=2",
                                     "train.min_delta=0.5"])
    result = train(cfg, out_dir=tmp_path / "run", verbose=False)
    assert result.summary["best_epoch"] == 1
    assert result.summary["epochs_run"] == 3
    assert result.summary["stopped_early"] is True
    assert result.summary["stopped"] == "early stopping (patience=2, monitor=val.dice_mean)"


def test_a_spent_time_budget_ends_the_run_like_a_finished_one(tmp_path):
    # a budget of 60 ns is spent by the first epoch: 1 epoch of 50 is run, validated although
    # val_every is 5, and the run ends with its checkpoints, its test evaluation and its summary
    cfg = build_config(tiny_tree(), ["train.epochs=50", "train.val_every=5", "train.max_minutes=1e-9"])
    result = train(cfg, out_dir=tmp_path / "run", verbose=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["stopped"] == "time budget (max_minutes=1e-09)"
    assert summary["stopped_early"] is False and summary["best_epoch"] == 1
    assert summary["train_seconds"] == pytest.approx(result.history[0]["seconds"])
    assert 0 <= summary["test"]["dice_mean"] <= 1 and summary == result.summary
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and rows[0]["val_dice_mean"] != ""
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_a_budget_that_is_not_spent_changes_nothing(tiny_config, tmp_path):
    plain = train(tiny_config, out_dir=tmp_path / "plain", verbose=False)
    budgeted = train(build_config(tiny_tree(), ["train.max_minutes=60"]), out_dir=tmp_path / "budget", verbose=False)
    assert budgeted.summary["epochs_run"] == 2 and budgeted.summary["stopped"] is None
    assert budgeted.summary["test"] == plain.summary["test"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_time_budget_must_be_positive(value):
    with pytest.raises(ConfigError, match=rf"train.max_minutes: Input should be greater than 0 \(got {value}\)"):
        build_config(tiny_tree(), [f"train.max_minutes={value}"])


def test_best_weights_restored_and_checkpoint_round_trip(tmp_path):
    cfg = build_config(tiny_tree(), ["train.epochs=3"])
    result = train(cfg, out_dir=tmp_path / "run", verbose=False)
    ckpt = load_checkpoint(result.run_dir / "best.pt")
    assert ckpt["epoch"] == result.summary["best_epoch"]
    model = model_from_checkpoint(ckpt)
    data = load_data(cfg)
    again = evaluate_split(model, data.val, data.class_names)
    assert again["dice_mean"] == pytest.approx(result.summary["val"]["dice_mean"])
    last = load_checkpoint(result.run_dir / "last.pt")
    assert last["epoch"] == 3 and "optimizer" in last and "scheduler" in last


def test_checkpoint_load_refuses_code(tmp_path):
    # a pickle that would run code is rejected by weights_only loading
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"model": Evil(), "meta": {}}))
    with pytest.raises(SegtuneError, match="not a readable checkpoint: .* never loaded since they could run") as err:
        load_checkpoint(bad)
    assert "weights_only" not in str(err.value)  # never the advice to load it unsafely


def test_exploding_loss_stops_with_clear_error(tmp_path):
    # SGD at lr 10: the loss grows past 10x its first value within a few epochs
    cfg = build_config(tiny_tree(), ["optimizer.name=sgd", "optimizer.lr=10", "loss.name=ce", "train.epochs=5"])
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch \d: the training loss [\d.]+ exceeds 10x its first"):
        train(cfg, out_dir=tmp_path / "run", verbose=False)


def test_nan_loss_stops_with_clear_error(tmp_path):
    # a NaN in the data makes the first loss NaN: stopped in epoch 1, the lr named in the fix
    from segtune.data import SOURCES, prepare

    cfg = build_config(tiny_tree())
    data = prepare(SOURCES.build("synthetic", cfg.data.options, 0), train_fraction=1.0, resize=None,
                   normalize="none", seed=0)
    data.train.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1: the training loss is nan; lower optimizer.lr \(now 0.01\)"):
        train(cfg, out_dir=tmp_path / "run", data=data, verbose=False)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_an_infinite_loss_stops_with_clear_error(tmp_path, monkeypatch, bad):
    # the loss of the third batch becomes infinite: stopped in that epoch, not one epoch later
    from segtune.components.losses import LOSSES

    build = LOSSES.build

    class Infinite(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, logits, target):
            self.calls += torch.is_grad_enabled()  # training batches only, not validation
            loss = self.inner(logits, target)
            return loss * bad if self.calls == 3 and torch.is_grad_enabled() else loss

    monkeypatch.setattr(LOSSES, "build", lambda *a, **k: Infinite(build(*a, **k)))
    cfg = build_config(tiny_tree(), ["train.epochs=3"])  # 16 training images, batches of 8: batch 3 is in epoch 2
    with pytest.raises(TrainingDiverged, match=rf"diverged at epoch 2: the training loss is {bad}; lower optimizer.lr"):
        train(cfg, out_dir=tmp_path / "run", data=None, verbose=False)


def test_bad_data_fails_before_a_run_directory_is_made(tmp_path):
    from segtune.errors import DataError

    cfg = build_config(tiny_tree(data={"source": "folder", "path": str(tmp_path / "missing")}))
    with pytest.raises(DataError, match="folder not found"):
        train(cfg, out_dir=tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()


def test_finished_run_is_never_overwritten(tiny_config, tmp_path):
    train(tiny_config, out_dir=tmp_path / "run", verbose=False)
    with pytest.raises(SegtuneError, match="already holds a finished run"):
        train(tiny_config, out_dir=tmp_path / "run", verbose=False)


def test_unwritable_run_directory(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SegtuneError, match="cannot write the run directory"):
        train(tiny_config, out_dir=blocker / "run", verbose=False)


def test_cuda_requested_without_gpu(tiny_config, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = build_config(tiny_tree(), ["train.device=cuda"])
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        train(cfg, out_dir=tmp_path / "run", verbose=False)


def test_bf16_autocast_trains(tmp_path):
    cfg = build_config(tiny_tree(), ["train.precision=bf16"])
    result = train(cfg, out_dir=tmp_path / "run", verbose=False)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path):
    # a U-Net of one level: its forward and backward compile to 12 C++ kernels instead of two levels'
    # 19 (the compile, not the training, is this test's time when the inductor cache is cold)
    shallow = ["model.depth=1"]
    eager = train(build_config(tiny_tree(), shallow), out_dir=tmp_path / "eager", verbose=False)
    fast = train(build_config(tiny_tree(), shallow + ["train.compile=true"]), out_dir=tmp_path / "compiled",
                 verbose=False)
    for a, b in zip(eager.history, fast.history):  # the same computation, fused: equal up to rounding
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert fast.summary["test"]["dice_mean"] == pytest.approx(eager.summary["test"]["dice_mean"], abs=0.01)
    saved = torch.load(tmp_path / "compiled" / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in saved)  # loadable by an uncompiled model


def test_compile_without_a_compiler_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        train(build_config(tiny_tree(), ["train.compile=true"]), out_dir=tmp_path / "run", verbose=False)


@pytest.mark.parametrize("monitor, column, sign", [("val.loss", "val_loss", -1.0),
                                                   ("val.dice_mean", "val_dice_mean", 1.0)])
def test_plateau_follows_its_own_monitor(tmp_path, monitor, column, sign):
    # with patience 0 the lr halves after every validation that did not improve the plateau's monitor
    cfg = build_config(tiny_tree(), ["train.epochs=5", "scheduler.name=plateau", "scheduler.patience=0",
                                     "scheduler.factor=0.5", f"scheduler.monitor={monitor}"])
    history = train(cfg, out_dir=tmp_path / "run", verbose=False).history
    lr, best, expected = 0.01, -float("inf"), []
    for row in history:
        expected.append(lr)
        value = sign * row[column]
        if value > best * (1 + 1e-4) if best > -float("inf") else True:  # torch's rel threshold, mode max
            best = value
        else:
            lr *= 0.5
    assert [row["lr"] for row in history] == pytest.approx(expected)
