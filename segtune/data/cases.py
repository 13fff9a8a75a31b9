"""Cases: which images of a split belong together, k-fold cross-validation by case, and the spacing of each.

Every source records its cases in ``SegData.info["cases"]`` (``{split: [[case_id, n_images], ...]}``,
the images of a case consecutive and in order): a NIfTI volume, a block of demo slices, or one
image. A source that records none has one case per image. From them:

- :func:`cross_validation_fold` divides the train and val cases (never the test cases) into
  ``data.folds`` folds by case, with a fixed seed, and makes fold ``data.fold`` the val split;
- :func:`with_cases` gives the val and test splits (and a whole train split) their
  :class:`~segtune.data.base.CaseSpan` list, with the spacing in mm of each case (NIfTI headers,
  the demo's grid, else ``data.pixel_spacing``), so that every evaluation scores each case;
- :func:`prepare_cases` is :func:`~segtune.data.base.prepare` with both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from segtune.data.base import CaseSpan, SegData, Split, prepare
from segtune.data.splits import case_folds
from segtune.errors import ConfigError

__all__ = ["PER_IMAGE_KEYS", "cross_validation_fold", "prepare_cases", "split_cases", "with_cases"]

# info keys holding one entry per image of each split: they follow the images into their folds
PER_IMAGE_KEYS = ("slices", "stems")
_NAMES = ("train", "val", "test")


def split_cases(data: SegData) -> dict[str, list[list[Any]]]:
    """``{split: [[case_id, n_images], ...]}`` of ``data``: the source's, else one case per image."""
    listed = data.info.get("cases")
    if listed is not None:
        return {name: [[str(c), int(n)] for c, n in listed[name]] for name in _NAMES}
    stems = data.info.get("stems")
    return {name: [[str(s), 1] for s in stems[name]] if stems is not None
            else [[f"{name}_{i:04d}", 1] for i in range(len(data.split(name)))] for name in _NAMES}


def _by_case(cases: list[list[Any]]) -> list[tuple[int, int]]:
    starts, start = [], 0
    for _, n in cases:
        starts.append((start, start + n))
        start += n
    return starts


def cross_validation_fold(data: SegData, *, folds: int, fold: int, split_seed: int = 0) -> SegData:
    """``data`` with its train and val cases dealt into ``folds`` folds and fold ``fold`` as val.

    The test split is left as it is, so it is held out of every fold; cases, never images of a
    case, are dealt (:func:`~segtune.data.splits.case_folds`), so no case is in two folds.

    Raises:
        ConfigError: ``fold`` out of range, fewer train and val cases than folds, or no test
            split apart from val (its cases would be in a fold).
    """
    if not 0 <= fold < folds:
        raise ConfigError(f"data.fold={fold}, but data.folds={folds} gives folds 0 to {folds - 1}; set data.fold "
                          f"to one of them")
    cases = split_cases(data)
    if cases["test"] == cases["val"]:
        raise ConfigError("data.folds: the test split is the val split here (data.test_fraction is 0, or the "
                          "splits file lists no test case), so its cases would be in a fold; give the data a test "
                          "split (data.test_fraction > 0, or test cases in the splits file)")
    pool = [(name, i) for name in ("train", "val") for i in range(len(cases[name]))]
    dealt = case_folds(len(pool), folds, split_seed)
    chosen = {"val": [pool[i] for i in dealt[fold]],
              "train": [pool[i] for k, f in enumerate(dealt) if k != fold for i in f]}
    chosen = {name: sorted(entries, key=lambda e: (e[0] != "train", e[1])) for name, entries in chosen.items()}
    spans = {name: _by_case(cases[name]) for name in ("train", "val")}
    splits, info = {}, dict(data.info)
    for name, entries in chosen.items():
        parts = [(data.split(src), slice(*spans[src][i])) for src, i in entries]
        splits[name] = Split(torch.cat([s.images[at] for s, at in parts]), torch.cat([s.masks[at] for s, at in parts]))
        for key in PER_IMAGE_KEYS:
            if key in data.info:
                info[key] = {**info[key], name: [x for src, i in entries
                                                 for x in data.info[key][src][slice(*spans[src][i])]]}
    info["cases"] = {**cases, **{name: [cases[src][i] for src, i in entries] for name, entries in chosen.items()}}
    info["split"] = {**info.get("split", {}), "train": f"the other {folds - 1} folds",
                     "val": f"fold {fold} of {folds} by case (split_seed {split_seed})"}
    return replace(data, info=info, **splits)


def _spacing_of(data: SegData, case_id: str, pixel_spacing: Sequence[float] | None) -> tuple[float, float, float]:
    known = data.info.get("spacing")
    if isinstance(known, dict) and case_id in known:
        return tuple(float(v) for v in known[case_id])
    if isinstance(known, (list, tuple)):
        return tuple(float(v) for v in known)
    row, col = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    return (1.0, float(row), float(col))


def with_cases(data: SegData, *, pixel_spacing: Sequence[float] | None = None,
               source_size: tuple[int, int] | None = None) -> SegData:
    """``data`` whose splits carry their :class:`CaseSpan` lists, where the images still match the cases.

    Args:
        data: prepared data whose ``info["cases"]`` (or one case per image) lists each split's cases.
        pixel_spacing: ``(rows, columns)`` in mm of sources without a spacing of their own (images).
        source_size: the ``(H, W)`` at which the source's spacing holds; a resize scales it.
    """
    cases = split_cases(data)
    h, w = data.train.images.shape[2:]
    scale = (1.0, source_size[0] / h, source_size[1] / w) if source_size else (1.0, 1.0, 1.0)
    splits = {}
    for name in _NAMES:
        split = data.split(name)
        if sum(n for _, n in cases[name]) != len(split):  # train after data.train_fraction < 1
            continue
        spans = tuple(CaseSpan(c, n, tuple(s * k for s, k in zip(_spacing_of(data, c, pixel_spacing), scale)))
                      for c, n in cases[name])
        splits[name] = replace(split, cases=spans)
    return replace(data, **splits)


def prepare_cases(raw: SegData, *, folds: int | None = None, fold: int = 0, split_seed: int = 0,
                  pixel_spacing: Sequence[float] | None = None, val_from: str = "fixed", **options: Any) -> SegData:
    """:func:`~segtune.data.base.prepare` with cross-validation fold ``fold`` of ``folds`` (None: the
    source's own split) taken first, and the splits' cases (:func:`with_cases`) attached last.

    ``options`` are :func:`~segtune.data.base.prepare`'s keyword arguments.
    """
    if folds is not None:
        raw = cross_validation_fold(raw, folds=folds, fold=fold, split_seed=split_seed)
    data = prepare(raw, val_from=val_from, **options)
    if val_from == "rest" and len(data.val) != len(raw.val):
        info = {**data.info, "split": {**data.info.get("split", {}), "val": "the training images data.train_fraction "
                                                                           "leaves out (data.val_from: rest)"}}
        cases = split_cases(data)
        info["cases"] = {**cases, "val": [[f"val_{i:04d}", 1] for i in range(len(data.val))]}
        data = replace(data, info=info)
    return with_cases(data, pixel_spacing=pixel_spacing, source_size=tuple(raw.train.images.shape[2:]))
