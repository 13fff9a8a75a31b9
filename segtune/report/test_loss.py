"""A common test loss: one loss computed on every trial's test predictions, so losses compare.

A run's stored test loss is its own training loss (Dice+CE for one trial, focal for another),
so it cannot rank trials that varied ``loss.name``. :func:`common_test_losses` loads each run's
``best.pt`` and evaluates one registered loss (``dice`` by default) on its test split, with the
same code as training's test evaluation (:func:`segtune.training.evaluate.evaluate_split`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from segtune.errors import ConfigError, DataError
from segtune.registry import suggest
from segtune.report.data import ReportedTrial, read_run, run_data


def check_test_loss(name: str) -> str:
    """``name`` if it is a registered loss.

    Raises:
        ConfigError: an unknown loss, with the closest one and the list.
    """
    from segtune.components.losses import LOSSES

    if name not in LOSSES.names():
        raise ConfigError(f"report --test-loss: unknown loss {name!r}{suggest(name, list(LOSSES.names()))}; "
                          f"choose from {', '.join(LOSSES.names())}")
    return name


def common_test_losses(records: Sequence[ReportedTrial], loss: str) -> dict[Path, float]:
    """The ``loss`` of each finished run's ``best.pt`` on its test split.

    Args:
        records: the trials; runs without a readable ``best.pt`` or a test split are left out.
        loss: a registered loss name, built with its default options.

    Returns:
        run directory -> the mean ``loss`` over its test images.
    """
    from segtune.components.losses import LOSSES
    from segtune.training.checkpoint import load_checkpoint, model_from_checkpoint
    from segtune.training.evaluate import evaluate_split

    check_test_loss(loss)
    cache: dict[str, Any] = {}
    out: dict[Path, float] = {}
    for folder in (d for r in records if r.runs for d in r.run_dirs):
        if not (folder / "best.pt").is_file():
            continue
        try:
            checkpoint = load_checkpoint(folder / "best.pt")
        except DataError as err:
            print(f"warning: {err}", file=sys.stderr)
            continue
        data = run_data(read_run(folder)["config"], cache)
        if data.test is None or len(data.test.images) == 0:
            continue
        loss_fn = LOSSES.build(loss, {}, len(data.class_names))
        result = evaluate_split(model_from_checkpoint(checkpoint), data.test, list(data.class_names), loss_fn=loss_fn,
                                patch_size=checkpoint["meta"].get("patch_size"))
        out[folder] = result["loss"]
    return out


__all__ = ["check_test_loss", "common_test_losses"]
