"""The run-time set-up: the CPUs a process may use, the OpenMP wait policy set at import, and a GPU never
kept waiting by the host between training batches."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from segtune.components.augment import AUGMENTATIONS
from segtune.components.losses import LOSSES
from segtune.config import build_config
from segtune.training import runtime
from tests.conftest import tiny_tree


def test_available_cpus_is_the_affinity_mask_capped_by_the_cgroup_quota(monkeypatch, tmp_path):
    # 4 CPUs in the mask, a quota of 1.5 CPUs (150000 us per 100000 us): 2 threads, not 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    real = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real(p))
    assert runtime.available_cpus() == 2
    cpu_max.write_text("max 100000\n")  # no quota: the mask
    assert runtime.available_cpus() == 4


def test_a_cgroup_v1_quota_caps_the_cpus_too(monkeypatch, tmp_path):
    # a container's --cpus on a cgroup v1 host: cpu.cfs_quota_us over cpu.cfs_period_us, no cpu.max
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    files = {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": tmp_path / "quota", "/sys/fs/cgroup/cpu/cpu.cfs_period_us":
             tmp_path / "period", "/sys/fs/cgroup/cpu.max": tmp_path / "absent"}
    (tmp_path / "quota").write_text("250000\n")
    (tmp_path / "period").write_text("100000\n")
    real = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: files.get(p, real(p)))
    assert runtime.available_cpus() == 3  # 2.5 CPUs
    (tmp_path / "quota").write_text("-1\n")  # no quota: the mask
    assert runtime.available_cpus() == 8


@pytest.mark.slow  # starts two interpreters that import segtune
def test_import_sets_a_passive_openmp_wait_unless_the_user_set_one():
    code = "import segtune, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_epoch_tally_counts_as_confusion_counts_and_keeps_the_first_diverged_loss():
    import torch

    from segtune.training.evaluate import labels_from_logits
    from segtune.training.metrics import confusion_counts

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)
    tally = runtime.EpochTally(3, torch.device("cpu"), first_loss=None, divergence_factor=10.0)
    for loss in (2.0, 5.0, 30.0, float("nan")):  # the first is the reference; 30 > 10 x 2 diverges first
        tally.add(logits, labels, torch.tensor(loss))
    expected = 4 * confusion_counts(labels_from_logits(logits), labels, 3)
    assert torch.equal(tally.counts(), expected)
    assert tally.diverged() == (30.0, 2.0)
    calm = runtime.EpochTally(3, torch.device("cpu"), first_loss=2.0, divergence_factor=10.0)
    calm.add(logits, labels, torch.tensor(19.0))  # below 10 x the run's first loss, 2.0
    assert calm.diverged() is None


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"))])
@pytest.mark.parametrize("loss, patch_size", [(name, None) for name in LOSSES.names()] + [("dice_ce", [16, 16])])
def test_training_batches_never_make_the_host_wait_for_a_gpu(device, loss, patch_size):
    # on a GPU every host read of a device value and every copy from pageable memory inside the batches
    # (draws, augmentation with intensity, crops, loss, step, tally) raises; on the CPU the same batches run
    overrides = ["augment.name=combine", "augment.intensity=1", f"train.device={device}", "train.precision=bf16",
                 "train.batch_size=4", f"loss.name={loss}"] + ([f"train.patch_size={patch_size}"] if patch_size else [])
    binary = "bce" in loss  # the sigmoid losses take a binary task
    cfg = build_config(tiny_tree(), overrides + (["data.n_classes=2"] if binary else []))
    data, dev = runtime.load_data(cfg), torch.device(device)
    model, loss_fn, optimizer = runtime.build_training(cfg, data, dev)
    samples = runtime.run_samples(cfg, data, dev)
    augment = AUGMENTATIONS.build(cfg.augment.name, cfg.augment.options)
    tally = runtime.EpochTally(data.n_classes, dev, first_loss=None, divergence_factor=10.0)
    generator = torch.Generator().manual_seed(0)

    def batches(n):
        for _ in range(n):
            x, y = samples(torch.randint(0, len(data.train), (4,), generator=generator), generator)
            yield augment(x, y, generator)

    step = {"model": model, "loss_fn": loss_fn, "optimizer": optimizer, "scaler": runtime.grad_scaler("bf16"),
            "device": dev, "precision": "bf16"}
    model.train()
    runtime.train_on_batches(batches(1), **step)  # warm-up: the first step allocates and loads kernels
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        runtime.train_on_batches(batches(6), tally=tally, **step)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert tally.samples == 24 and tally.diverged() is None and math.isfinite(tally.mean_loss())
    assert int(tally.counts()[:, 2].sum()) == 24 * (16 * 16 if patch_size else 32 * 32)  # every pixel counted


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"))])
def test_an_evaluation_reads_its_sums_once_whatever_its_batches(device):
    # the same metrics in 6 batches as in 2; on a GPU as many host waits (the final reads) for both
    import warnings

    from segtune.training.evaluate import evaluate_split

    cfg = build_config(tiny_tree(), [f"train.device={device}", "train.precision=bf16"])
    data, dev = runtime.load_data(cfg), torch.device(device)
    model, loss_fn, _ = runtime.build_training(cfg, data, dev)
    split = data.train  # 16 images

    def evaluated(batch_size):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = evaluate_split(model, split, data.class_names, loss_fn=loss_fn, batch_size=batch_size,
                                        device=dev, precision="bf16")
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        return result, sum("synchroniz" in str(w.message) for w in caught)

    (few, few_waits), (many, many_waits) = evaluated(8), evaluated(3)
    # the same pixels counted (a logit tie broken otherwise by another batch's kernels moves a Dice by 1e-4)
    assert few["dice_per_class"] == pytest.approx(many["dice_per_class"], abs=1e-3)
    assert many_waits == few_waits
