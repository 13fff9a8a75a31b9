"""Resuming an interrupted run ends with the same numbers as an uninterrupted one."""

import json
import time

import pytest
import torch
import yaml

from segtune.cli import main
from segtune.config import build_config
from segtune.training.checkpoint import load_checkpoint
from segtune.errors import DataError, SegtuneError
from segtune.training.loop import train

from tests.conftest import run_killed_in_epoch, tiny_tree

OVERRIDES = ["train.epochs=5", "augment.name=combine", "model.dropout=0.2", "scheduler.name=step",
             "scheduler.step_size=2", "train.patience=3"]


class Crash(Exception):
    pass


def crash_after(n):
    def on_epoch(epoch, row):
        if epoch == n:
            raise Crash()
    return on_epoch


@pytest.mark.parametrize("patches", [[], ["train.patch_size=[16,16]", "train.foreground_oversample=0.5"]],
                         ids=["whole", "patches"])
def test_resume_matches_uninterrupted_run(tmp_path, patches):
    # crops are drawn from the run's generator, saved in last.pt: the resumed epochs see the same crops
    cfg = build_config(tiny_tree(), OVERRIDES + patches)
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(2)], verbose=False)
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.summary["test"] == full.summary["test"]
    assert resumed.summary["best_epoch"] == full.summary["best_epoch"]
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + full.summary["epochs_run"]  # the earlier epochs' rows are kept, none twice


def test_a_run_resumed_after_its_budget_was_spent_ends_at_once(tmp_path):
    # stopped after the epoch that spent its budget, before its summary: the resume trains no
    # further epoch and writes the summary the uninterrupted run wrote
    cfg = build_config(tiny_tree(), ["train.epochs=50", "train.max_minutes=1e-9"])
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(1)], verbose=False)
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["epochs_run"] == full.summary["epochs_run"] == 1
    assert resumed.summary["stopped"] == "time budget (max_minutes=1e-09)"
    assert resumed.summary["test"] == full.summary["test"]
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 1 + 1


def test_a_resumed_run_counts_the_seconds_of_all_its_parts(tmp_path):
    # the first part takes at least a second (a slow callback after epoch 1); the resumed run's
    # seconds are that part's, recorded in last.pt, plus its own epochs'
    cfg = build_config(tiny_tree(), OVERRIDES)

    def slow_then_crash(epoch, row):
        if epoch == 1:
            time.sleep(1.0)
        crash_after(2)(epoch, row)

    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[slow_then_crash], verbose=False)
    first = load_checkpoint(tmp_path / "cut" / "last.pt")["progress"]["seconds"]
    assert first >= 1.0
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["seconds"] >= first + sum(row["seconds"] for row in resumed.history[2:])
    assert resumed.summary["train_seconds"] == pytest.approx(sum(row["seconds"] for row in resumed.history))


def test_a_last_pt_without_seconds_counts_its_epochs_seconds(tmp_path):
    # a last.pt of an older segtune has no run time: its epochs' times (1000 s each here) stand in
    cfg = build_config(tiny_tree(), OVERRIDES)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(2)], verbose=False)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    del last["progress"]["seconds"]
    for row in last["progress"]["history"]:
        row["seconds"] = 1000.0
    torch.save(last, tmp_path / "cut" / "last.pt")
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["seconds"] >= 2000.0 and resumed.summary["train_seconds"] >= 2000.0


def test_a_run_started_before_a_config_field_existed_resumes(tmp_path):
    # a config.yaml written by an older segtune lacks train.max_minutes: its default, no budget
    cfg = build_config(tiny_tree(), OVERRIDES)
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(2)], verbose=False)
    saved = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())
    del saved["train"]["max_minutes"]
    (tmp_path / "cut" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["test"] == full.summary["test"]


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = build_config(tiny_tree(), OVERRIDES)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(1)], verbose=False)
    other = build_config(tiny_tree(), OVERRIDES + ["optimizer.lr=0.5"])
    with pytest.raises(SegtuneError, match="differs from the run's config.yaml in optimizer"):
        train(other, out_dir=tmp_path / "cut", verbose=False, resume=True)


def test_resume_needs_an_unfinished_run(tiny_config, tmp_path):
    with pytest.raises(SegtuneError, match="has no config.yaml: no run was started there"):
        train(tiny_config, out_dir=tmp_path / "empty", verbose=False, resume=True)
    train(tiny_config, out_dir=tmp_path / "done", verbose=False)
    with pytest.raises(SegtuneError, match="already finished"):
        train(tiny_config, out_dir=tmp_path / "done", verbose=False, resume=True)


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_epoch_1(tmp_path):
    # killed in epoch 1: config.yaml is there, last.pt not yet; --resume starts it over in place
    cfg = build_config(tiny_tree(), OVERRIDES)
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["test"] == full.summary["test"]
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 1 + full.summary["epochs_run"]


@pytest.mark.slow
@pytest.mark.parametrize("patches", [[], ["train.patch_size=[16,16]"]], ids=["whole", "patches"])
def test_sigkill_then_resume_from_the_command_line(tmp_path, patches):
    # a real kill -9 of `segtune train` mid-run; `--resume` finishes it with the uninterrupted numbers
    tree = tiny_tree()
    tree["data"].update(n_train=48)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree))
    args = ["train", str(config), "--quiet", "--set", *OVERRIDES[:-1], "train.epochs=12", "train.patience=0",
            *patches]
    # only the killed run needs a process of its own: the uninterrupted run and the resume are the
    # same command run in this one (one thread in both, as in the killed process: tests/conftest.py)
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    run = tmp_path / "cut"
    run_killed_in_epoch(3, args + ["--out", str(run)])  # its metrics row written, its last.pt not
    assert _rows(run / "metrics.csv") == 1 + 3 and not (run / "summary.json").exists()
    first = torch.load(run / "last.pt", weights_only=True)
    assert first["epoch"] == 2
    assert main(args + ["--out", str(run), "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut = json.loads((run / "summary.json").read_text())
    assert cut["test"] == full["test"] and cut["epochs_run"] == full["epochs_run"] == 12
    # the part before the kill counts: its wall time up to last.pt, plus the resumed epochs' times
    resumed_epochs = cut["train_seconds"] - sum(r["seconds"] for r in first["progress"]["history"])
    assert cut["seconds"] >= first["progress"]["seconds"] + resumed_epochs


def _rows(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def _truncate(path, keep=0.5):
    # written whole, then cut: what a full disk or a copy that stopped half-way leaves
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_a_damaged_best_pt_is_rebuilt_from_last_pt_on_resume(tmp_path):
    # last.pt holds a copy of the best weights: the resumed run ends with the uninterrupted numbers
    cfg = build_config(tiny_tree(), OVERRIDES)
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(2)], verbose=False)
    _truncate(tmp_path / "cut" / "best.pt")
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["test"] == full.summary["test"]
    assert resumed.summary["best_epoch"] == full.summary["best_epoch"]
    best, expected = load_checkpoint(tmp_path / "cut" / "best.pt"), load_checkpoint(tmp_path / "full" / "best.pt")
    assert best["epoch"] == expected["epoch"]
    assert all(torch.equal(best["model"][k], expected["model"][k]) for k in expected["model"])


def test_a_damaged_last_pt_is_a_clear_error_naming_it(tmp_path):
    cfg = build_config(tiny_tree(), OVERRIDES)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(2)], verbose=False)
    _truncate(tmp_path / "cut" / "last.pt")
    with pytest.raises(DataError, match=r"last\.pt: not a readable checkpoint: the file is damaged \(truncated\?\)"
                                        r".*; re-run the training that wrote it, or delete it") as err:
        train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert "weights_only" not in str(err.value)


def test_a_resumed_auto_run_keeps_the_precision_it_trained_in(tmp_path, monkeypatch):
    # the cache (or $SEGTUNE_PRECISION) says otherwise by the time of the resume: the run keeps its own
    cfg = build_config(tiny_tree(), ["train.epochs=3"])
    monkeypatch.setenv("SEGTUNE_PRECISION", "fp32")
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash_after(1)], verbose=False)
    monkeypatch.setenv("SEGTUNE_PRECISION", "bf16+channels_last")
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert resumed.summary["precision"]["precision"] == "fp32" and resumed.summary["precision"]["source"] == "resumed"
    assert resumed.summary["test"] == full.summary["test"]
