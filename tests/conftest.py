"""Shared fixtures: small synthetic configs that train in a second or two."""

from __future__ import annotations

import time

import optuna
import pytest
import torch

from segtune.config import build_config

torch.set_num_threads(1)  # tiny models gain nothing from more; worker subprocesses get the cores


def tiny_tree(**sections) -> dict:
    """A config tree for a tiny synthetic task; keyword sections replace the defaults."""
    tree = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8, "size": 32, "n_classes": 3},
        "model": {"name": "unet", "depth": 2, "base": 4},
        "loss": {"name": "dice_ce"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 8, "patience": 0},
    }
    tree.update(sections)
    return tree


@pytest.fixture
def tiny_config():
    """A validated config for a tiny synthetic task (2 epochs, about a second)."""
    return build_config(tiny_tree())


def wait_for_trials(name: str, storage: str, until, *, timeout: float = 240, what: str = "the worker") -> list:
    """Poll a study's trials until ``until(trials)`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except Exception:  # not made yet, or being written
            continue
        if until(trials):
            return trials
    pytest.fail(f"{what} did not get there within {timeout} s")
