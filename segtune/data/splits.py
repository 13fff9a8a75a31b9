"""Which cases go to train, val and test, and why: a splits file, nnU-Net's folds, or a random cut.

The first rule that applies decides:

1. ``data.splits``: the file the user names, either ``{"train": [...], "val": [...], "test": [...]}``
   or nnU-Net's list of folds ``[{"train": [...], "val": [...]}, ...]`` (fold ``data.fold``);
2. ``splits_final.json`` in the dataset folder (nnU-Net's folds, fold ``data.fold``);
3. ``splits.json`` in the dataset folder (train / val / test lists);
4. a random cut by case (``val_fraction``, ``test_fraction``, ``split_seed``).

A dataset's own labelled test set (nnU-Net's ``imagesTs`` / ``labelsTs``) is the test split
whatever the rule; the rule then only divides the other cases into train and val. Cases, never
images of a case, are split, so that no case is in two splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segtune.errors import ConfigError, DataError

__all__ = [
    "FOLDS_FILE", "SPLITS_FILE", "SPLIT_NAMES", "TEST_FRACTION", "VAL_FRACTION", "CaseSplit", "case_folds", "choose_split",
    "describe_split", "random_split", "read_folds_file", "read_json", "read_splits_file",
]

SPLIT_NAMES = ("train", "val", "test")
FOLDS_FILE = "splits_final.json"  # nnU-Net's cross-validation folds
SPLITS_FILE = "splits.json"  # one train / val / test split
VAL_FRACTION = 0.15  # the share of cases held out for validation by a random cut
TEST_FRACTION = 0.15  # the share of cases held out for testing by a random cut; 0 tests on val
_MISSING_SPLITS = ("splits file not found; write {\"train\": [...], \"val\": [...], \"test\": [...]} with the "
                   "case ids (or nnU-Net's list of folds), or leave data.splits unset")


@dataclass(frozen=True)
class CaseSplit:
    """Positions of the cases in each split, where each split came from, and notes on the choice.

    ``parts["test"]`` is empty when the dataset brings its own test set (``held_out_test``).
    """

    parts: dict[str, list[int]]
    origin: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def info(self, notes: list[str] = ()) -> dict[str, Any]:
        """What ``SegData.info["split"]`` records: the origin of each split and the notes."""
        return {**{name: self.origin[name] for name in SPLIT_NAMES}, "notes": [*notes, *self.notes]}


def read_json(file: Path, missing_hint: str) -> object:
    """The parsed JSON of ``file``; a DataError says ``missing_hint`` if it is absent, or the parse error."""
    if not file.is_file():
        raise DataError(f"{file}: {missing_hint}")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{file}: not valid JSON ({err}); fix the file") from None


def _known_id(entry: object, position: dict[str, int]) -> str | None:
    """The case id an entry of a splits file names: the id itself, or a file name of the case."""
    name = str(entry)
    for candidate in (name, Path(name).stem, Path(Path(name).stem).stem):  # case3.png, case_001.nii.gz
        if candidate in position:
            return candidate
    return None


def _positions(lists: dict[str, object], ids: list[str], file: Path, where: str) -> dict[str, list[int]]:
    """Positions in ``ids`` of each named list, checking that every case is in exactly one list."""
    position = {s: i for i, s in enumerate(ids)}
    seen: dict[str, str] = {}
    parts: dict[str, list[int]] = {name: [] for name in lists}
    for name, entries in lists.items():
        if not isinstance(entries, list):
            raise DataError(f"{file}: {where}{name} must be a list of case ids, found {type(entries).__name__}")
        for entry in entries:
            case = _known_id(entry, position)
            if case is None:
                raise DataError(f"{file}: {where}{name} lists {str(entry)!r}, which is not in the dataset; "
                                f"fix the name or remove it")
            if case in seen:
                raise DataError(f"{file}: {case!r} is in both {seen[case]} and {name}; a case may be in one split")
            seen[case] = name
            parts[name].append(position[case])
    missing = [s for s in ids if s not in seen]
    if missing:
        raise DataError(f"{file}: {len(missing)} case(s) in no split, e.g. {missing[0]!r}; add them to "
                        f"{' or '.join(lists)}, or remove the files")
    for name in ("train", "val"):
        if not parts.get(name):
            raise DataError(f"{file}: {where}the {name} split is empty; list at least one case in it")
    return {name: sorted(index) for name, index in parts.items()}


def _lists_split(tree: object, stems: list[str], file: Path) -> dict[str, list[int]]:
    if not isinstance(tree, dict) or not set(tree) <= set(SPLIT_NAMES):
        raise DataError(f"{file}: expected a mapping with keys train, val and test (or nnU-Net's list of "
                        f"folds), found {sorted(tree) if isinstance(tree, dict) else type(tree).__name__}")
    return {"test": [], **_positions({name: tree.get(name, []) for name in SPLIT_NAMES}, stems, file, "")}


def _folds_split(tree: object, ids: list[str], fold: int, file: Path) -> dict[str, list[int]]:
    if not isinstance(tree, list) or not tree or not all(isinstance(f, dict) and set(f) == {"train", "val"}
                                                         for f in tree):
        raise DataError(f"{file}: expected nnU-Net's list of folds [{{\"train\": [case ids], \"val\": [case ids]}}, "
                        f"...], found {json.dumps(tree)[:80]}")
    if not 0 <= fold < len(tree):
        raise ConfigError(f"{file}: data.fold={fold}, but the file holds {len(tree)} fold(s), 0 to {len(tree) - 1}; "
                          f"set data.fold to one of them")
    return _positions({"train": tree[fold]["train"], "val": tree[fold]["val"]}, ids, file, f"fold {fold} ")


def read_splits_file(file: Path, stems: list[str]) -> dict[str, list[int]]:
    """Positions in ``stems`` of each split named in a ``{"train", "val", "test"}`` JSON file.

    Raises:
        DataError: missing or invalid file, unknown stem, stem in two splits, case in no split,
            or an empty train or val split.
    """
    return _lists_split(read_json(file, _MISSING_SPLITS), stems, file)


def read_folds_file(file: Path, ids: list[str], fold: int) -> dict[str, list[int]]:
    """Positions in ``ids`` of the train and val cases of fold ``fold`` of nnU-Net's ``splits_final.json``.

    Args:
        file: a JSON list of folds, ``[{"train": [case ids], "val": [case ids]}, ...]``.
        ids: the case ids of the dataset.
        fold: which fold, counted from 0.

    Raises:
        ConfigError: ``fold`` is not a fold of the file.
        DataError: invalid file, unknown case, case in both lists or in neither, or an empty list.
    """
    return _folds_split(read_json(file, _MISSING_SPLITS), ids, fold, file)


def random_split(n: int, val_fraction: float, test_fraction: float, split_seed: int,
                 where: Path) -> dict[str, list[int]]:
    """Positions ``0..n-1`` shuffled with ``split_seed`` into train / val / test shares."""
    n_val, n_test = max(1, round(n * val_fraction)), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} item(s) are too few for the validation and test shares "
                        f"({n_val} + {n_test}); add data or lower data.val_fraction / data.test_fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return {"val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
            "train": sorted(order[n_val + n_test:])}


def _cut_test_from_train(parts: dict[str, list[int]], n: int, test_fraction: float, split_seed: int,
                         file: Path) -> dict[str, list[int]]:
    """Move a random ``test_fraction`` of all ``n`` cases from a fold's train cases to test."""
    n_test = round(n * test_fraction)
    if len(parts["train"]) - n_test < 1:
        raise DataError(f"{file}: the fold's {len(parts['train'])} train case(s) are too few to give "
                        f"{n_test} to the test split; lower data.test_fraction")
    order = torch.randperm(len(parts["train"]), generator=torch.Generator().manual_seed(split_seed)).tolist()
    test = sorted(parts["train"][i] for i in order[:n_test])
    return {"train": sorted(set(parts["train"]) - set(test)), "val": parts["val"], "test": test}


def _chosen_file(root: Path, splits: str | None) -> tuple[Path | None, list[str]]:
    """The splits file that applies (None: a random cut), and notes on the files it passes over."""
    found = [name for name in (FOLDS_FILE, SPLITS_FILE) if (root / name).is_file()]
    if splits:
        file = Path(splits).expanduser()
        file = file if file.is_absolute() else root / file
        return file, [f"{name} is not used: data.splits comes first" for name in found if root / name != file]
    if found:
        return root / found[0], [f"{name} is not used: {found[0]} comes first" for name in found[1:]]
    return None, []


def _shown(file: Path, root: Path, splits: str | None) -> str:
    shown = file.name if file.parent == root else str(file)
    return f"{shown} (data.splits)" if splits else shown


_Parts = dict[str, list[int]]
_Origin = dict[str, str]


def _random_parts(ids: list[str], root: Path, val_fraction: float, test_fraction: float, split_seed: int,
                  held_out_test: str | None) -> tuple[_Parts, _Origin]:
    parts = random_split(len(ids), val_fraction, 0.0 if held_out_test else test_fraction, split_seed, root)
    return parts, {"train": "the other cases", "val": f"random {val_fraction:.0%}, split_seed {split_seed}",
                   "test": f"random {test_fraction:.0%}, split_seed {split_seed}"}


def _fold_parts(tree: object, ids: list[str], file: Path, name: str, fold: int, test_fraction: float,
                split_seed: int, held_out_test: str | None) -> tuple[_Parts, _Origin]:
    parts = _folds_split(tree, ids, fold, file)
    name = f"fold {fold} of {name}"
    if held_out_test or round(len(ids) * test_fraction) == 0:  # too few cases for a test case: test on val
        return parts, {"train": name, "val": name}
    return (_cut_test_from_train(parts, len(ids), test_fraction, split_seed, file),
            {"train": f"{name}, less the test cases", "val": name,
             "test": f"random {test_fraction:.0%} of the fold's train cases, split_seed {split_seed}"})


def _list_parts(tree: object, ids: list[str], file: Path, name: str, held_out_test: str | None
                ) -> tuple[_Parts, _Origin]:
    parts = _lists_split(tree, ids, file)
    if held_out_test and parts["test"]:
        raise DataError(f"{file}: lists {len(parts['test'])} test case(s), but {held_out_test} is this "
                        f"dataset's test split; move them to train or val, or remove the test labels")
    return parts, dict.fromkeys(SPLIT_NAMES, name)


def choose_split(root: Path, ids: list[str], *, splits: str | None, fold: int, val_fraction: float,
                 test_fraction: float, split_seed: int, held_out_test: str | None = None) -> CaseSplit:
    """Split the cases ``ids`` of the dataset in ``root`` by the first rule that applies.

    Args:
        root: the dataset folder, where ``splits_final.json`` and ``splits.json`` are looked for.
        ids: the case ids (a folder dataset's stems), in a fixed order.
        splits: ``data.splits``, a file relative to ``root`` or absolute, or None.
        fold: ``data.fold``, the fold of a folds file.
        val_fraction, test_fraction, split_seed: the random cut's shares and seed.
        held_out_test: what the dataset's own labelled test set is called (``imagesTs/labelsTs``),
            or None; then ``parts["test"]`` is empty and the caller supplies the test cases.

    Returns:
        A :class:`CaseSplit`; without a test set of any kind the test split is the val split.

    Raises:
        ConfigError: ``test_fraction`` set away from its default beside a dataset's own test set,
            or ``fold`` set away from 0 with no folds file in use or out of its range.
        DataError: an invalid splits file, or too few cases for the shares.
    """
    if held_out_test and test_fraction != TEST_FRACTION:
        raise ConfigError(f"{root}: data.test_fraction={test_fraction}, but {held_out_test} is this dataset's "
                          f"test split, so no test share is cut from the training cases; remove data.test_fraction, "
                          f"or remove the test labels from the dataset folder to cut the test split at random")
    file, notes = _chosen_file(root, splits)
    tree = read_json(file, _MISSING_SPLITS) if file else None
    folds = file is not None and (isinstance(tree, list) or file.name == FOLDS_FILE)
    if fold and not folds:
        raise ConfigError(f"{root}: data.fold={fold}, but no {FOLDS_FILE} is in use; put nnU-Net's {FOLDS_FILE} "
                          f"in the dataset folder or name it in data.splits, or remove data.fold")
    if file is None:
        parts, origin = _random_parts(ids, root, val_fraction, test_fraction, split_seed, held_out_test)
    elif folds:
        parts, origin = _fold_parts(tree, ids, file, _shown(file, root, splits), fold, test_fraction, split_seed,
                                    held_out_test)
    else:
        parts, origin = _list_parts(tree, ids, file, _shown(file, root, splits), held_out_test)
    return _finish(parts, origin, notes, held_out_test)


def _finish(parts: _Parts, origin: _Origin, notes: list[str], held_out_test: str | None) -> CaseSplit:
    """Name the test split's origin: the dataset's own test set, the cut, or the val split standing in."""
    parts = {"test": [], **parts}
    if held_out_test:
        origin = {**origin, "test": held_out_test}
        notes = [f"test is {held_out_test}, so data.test_fraction is not used; train and val divide the other "
                 f"cases", *notes]
    elif not parts["test"]:
        parts["test"] = parts["val"]
        origin = {**origin, "test": "the val split (no test cases: data.test_fraction is 0 or the file lists none)"}
        notes = ["no test cases: test scores are those of the val split", *notes]
    return CaseSplit({name: parts[name] for name in SPLIT_NAMES}, origin, notes)


def describe_split(split: dict[str, Any], counts: dict[str, int], unit: str = "cases") -> str:
    """One line: ``test: imagesTs/labelsTs (12 cases); val: fold 0 of splits_final.json (20 cases); ...``.

    Args:
        split: ``SegData.info["split"]``.
        counts: the number of cases (or images) per split.
        unit: what ``counts`` counts, in the plural.
    """
    return "; ".join(f"{name}: {split[name]} ({counts[name]} {unit if counts[name] != 1 else unit[:-1]})"
                     for name in ("test", "val", "train"))


def case_folds(n: int, folds: int, split_seed: int, where: str = "data.folds") -> list[list[int]]:
    """Positions ``0..n-1`` of cases dealt into ``folds`` folds of near-equal size, shuffled with ``split_seed``.

    Every case is in exactly one fold; the same ``n``, ``folds`` and ``split_seed`` give the same folds.

    Raises:
        ConfigError: fewer cases than folds.

    Example:
        >>> sorted(i for f in case_folds(7, 3, 0) for i in f)
        [0, 1, 2, 3, 4, 5, 6]
    """
    if n < folds:
        raise ConfigError(f"{where}={folds}, but only {n} case(s) are outside the test split; use at most "
                          f"{n} folds, or more data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return [sorted(order[k::folds]) for k in range(folds)]
