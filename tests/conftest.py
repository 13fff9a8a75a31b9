"""Shared fixtures: small synthetic configs that train in a second or two."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from xdist.scheduler import LoadScopeScheduling

# torch and segtune are imported where tests run, not here: with xdist the controlling process, which
# runs no test, imports this file too, before it starts the test processes


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread per test process: tiny models gain nothing from more."""
    import torch

    torch.set_num_threads(1)


# The packages whose tests share package-scoped fixtures: tests/report trains one run and writes one
# study's report for all of its test files
SHARED_PACKAGES = ("tests/report/",)


class ByModule(LoadScopeScheduling):
    """xdist's ``loadscope``: a test process gets a module's tests together, so that a module- or
    package-scoped fixture (a trained run, a written report) is made in one process, not in each."""

    def _split_scope(self, nodeid: str) -> str:
        return next((p for p in SHARED_PACKAGES if nodeid.startswith(p)), None) or super()._split_scope(nodeid)


def pytest_xdist_make_scheduler(config, log):
    """:class:`ByModule` for ``-n`` (the default, ``-n 2``); a ``--dist`` other than ``load`` is kept."""
    return ByModule(config, log) if config.getvalue("dist") == "load" else None


# and one thread in what the tests start too: a study in the test process (its trials train at the
# study's count, by default every CPU but one) and the processes it starts (`segtune train`, study workers)
# read OMP_NUM_THREADS. The suite already runs one test per core (xdist); more threads than cores
# make every small parallel op wait for a descheduled thread (a value set before the run is kept)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# train.precision: auto caches its timings per machine and model shape: in a directory of the test
# session (inherited by the subprocesses it starts), never in the user's cache
# train.precision auto trains in fp32 in the tests: a timed choice would make their numbers depend on
# the machine's load when the suite started (tests/training/test_precision.py times it on purpose)
if not os.environ.get("SEGTUNE_PRECISION"):  # unset or empty (the setting reads empty as unset)
    os.environ["SEGTUNE_PRECISION"] = "fp32"
if "SEGTUNE_CACHE_DIR" not in os.environ:
    os.environ["SEGTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="segtune-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SEGTUNE_CACHE_DIR"], ignore_errors=True)


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


def study_tree(*, epochs: int = 1, **fields) -> dict:
    """A grid study of two learning rates on the tiny synthetic task, ``epochs`` epochs per trial;
    keyword fields replace the study file's keys."""
    tree = {"name": "tiny", "base": tiny_tree(train={"epochs": epochs, "batch_size": 8, "patience": 0}),
            "method": "grid", "space": {"optimizer.lr": [0.01, 0.001]}}
    tree.update(fields)
    return tree


def write_study(folder: Path, *, epochs: int = 1, **fields) -> Path:
    """Write :func:`study_tree` (with ``fields``) to ``folder/study.yaml``; returns its path."""
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study_tree(epochs=epochs, **fields)))
    return path


def unique_study_name() -> str:
    """A study name no other test uses: for a storage that several tests share."""
    return f"study-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tiny_config():
    """A validated config for a tiny synthetic task (2 epochs, about a second)."""
    from segtune.config import build_config

    return build_config(tiny_tree())


KILLED_IN_EPOCH = """
import importlib, os, signal, sys
from segtune.cli import main
training = importlib.import_module("segtune.training.checkpoint")  # last.pt is written through its save_atomic
epoch, run_dir_prefix = int(sys.argv[1]), sys.argv[2]
save = training.save_atomic
def save_or_die(obj, path):
    if path.name == "last.pt" and obj["epoch"] == epoch and path.parent.name.startswith(run_dir_prefix):
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path)
training.save_atomic = save_or_die
sys.exit(main(sys.argv[3:]))
"""


def run_killed_in_epoch(epoch: int, args: list[str], run_dir_prefix: str = "") -> None:
    """Run ``segtune ARGS`` in a process that kills itself (SIGKILL) in epoch ``epoch`` of the
    first run directory whose name starts with ``run_dir_prefix``: after that epoch's row of
    metrics.csv, before its last.pt, so the last checkpoint is the previous epoch's."""
    import signal
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH, str(epoch), run_dir_prefix, *args],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
