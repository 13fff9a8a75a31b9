"""The throughput benchmark's tables: the thread bar and where a training step goes."""

from __future__ import annotations

import pytest

from benchmarks.throughput import STEP_PARTS, step_profile, thread_lines
from segtune.config import build_config
from segtune.training.runtime import load_data

from tests.conftest import tiny_tree


def test_the_thread_bar_compares_the_default_and_auto_with_the_best_setting_under_load():
    idle, busy = "idle (load average 0.1 -> 0.2)", "one busy process (load average 1.1 -> 1.2)"
    rows = [(idle, "default: 2 threads, passive wait, fixed", 1.0, "2 x4"),
            (idle, "train.num_threads: auto: the CPUs left free, followed between epochs", 1.0, "2 x4"),
            (idle, "1 thread", 1.5, "1 x4"),
            (busy, "default: 2 threads, passive wait, fixed", 2.0, "2 x4"),
            (busy, "train.num_threads: auto: the CPUs left free, followed between epochs", 1.25, "1 x4"),
            (busy, "1 thread", 1.0, "1 x4")]
    text = "\n".join(thread_lines(rows))
    # the rows name the default: the table says which setting a run gets unless it asks for another
    assert f"| {busy} | default: 2 threads, passive wait, fixed | 2.00 | 0.50 | 2 x4 |" in text
    assert f"| {busy} | train.num_threads: auto: the CPUs left free, followed between epochs | 1.25 | 0.80 | 1 x4 |" \
        in text
    assert f"| {idle} | 1 thread | 1.50 | 0.67 | 1 x4 |" in text
    assert "the default (fixed, reproducible) runs at 0.50x the best setting: the bar (at least 0.8x) is NOT met" in text
    assert "auto (follows the load) runs at 0.80x the best setting: the bar (at least 0.8x) is met" in text
    rows[4] = rows[4][:2] + (1.3, "2 x4")
    assert "auto (follows the load) runs at 0.77x the best setting: the bar (at least 0.8x) is NOT met" in \
        "\n".join(thread_lines(rows))


@pytest.mark.slow  # profiles training steps
def test_the_step_profile_shares_add_up_and_name_every_part():
    cfg = build_config(tiny_tree(augment={"name": "combine"}, train={"epochs": 1, "batch_size": 4, "patience": 0}))
    parts = dict(step_profile(cfg, load_data(cfg), steps=2))
    assert set(STEP_PARTS) <= set(parts) and parts["seconds per step"] > 0
    operators = [parts[p] for p in STEP_PARTS] + [parts["everything else (of the operators' time)"]]
    assert sum(operators) == pytest.approx(1.0) and min(operators) >= 0
    assert parts["convolutions (forward and backward)"] > 0.05  # a U-Net's step is mostly convolutions
    assert 0 < parts["drawing and augmenting the batch"] < 1 and 0 < parts["train Dice and divergence tally"] < 1
