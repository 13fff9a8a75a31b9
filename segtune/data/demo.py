"""The built-in ``demo`` dataset: brain tissue segmentation on the MNI ICBM152 2009 template.

The T1 template and its grey- and white-matter probability maps ship inside the ``nilearn``
package (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``), so the
demo needs no download. Labels are derived per voxel:

* background (0): T1 intensity at or below 20 % of its maximum (nilearn's own brain-mask rule);
* inside the brain, the most probable of CSF (1), grey matter (2) and white matter (3), where
  p(CSF) = 1 - p(GM) - p(WM), clipped at 0.

The volume is optionally resampled to 2 mm (T1 and probabilities averaged over 2x2x2 voxels
before the argmax), cut into 2D slices along ``plane`` and cropped in-plane to the head. Every
slice of the volume is kept, the empty ones above the head included (``min_brain_fraction=0``):
a model then learns them as background, and a prediction of the whole template puts no tissue
there. The slices are split into train / val / test by contiguous blocks chosen with
``split_seed``, so no test slice is the direct neighbour of many training slices. Each block is
a case (``info["cases"]``): cross-validation folds (``data.folds``) deal whole blocks.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.data.base import SOURCES, SegData, Split
from segtune.errors import DataError

__all__ = ["CLASS_NAMES", "COPYRIGHT", "PLANE_AXIS", "demo", "load_volume", "template_files"]

CLASS_NAMES = ["background", "csf", "grey_matter", "white_matter"]
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

COPYRIGHT = """\
MNI ICBM152 non-linear symmetric 2009a template, as shipped in nilearn.
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express
or implied warranty. The authors are not responsible for any data loss, equipment damage, property
loss, or injury to subjects or patients resulting from the use or misuse of this software package.
References: Fonov et al., NeuroImage 54 (2011); Fonov et al., NeuroImage 47 (2009) S102;
Collins et al., 'ANIMAL+INSECT', Int. Conf. Information Processing in Medical Imaging (1999).
"""


def template_files() -> dict[str, Path]:
    """Paths of the T1, GM and WM template files inside the installed nilearn package."""
    try:
        import nilearn.datasets
    except ImportError:  # pragma: no cover - nilearn is a dependency
        raise DataError("the demo dataset needs nilearn: pip install nilearn") from None
    folder = Path(nilearn.datasets.__file__).parent / "data"
    files = {k: folder / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"demo template files not found in nilearn: {missing}; reinstall nilearn")
    return files


@functools.lru_cache(maxsize=4)
def load_volume(spacing: int) -> tuple[np.ndarray, np.ndarray]:
    """T1 (float32, [0, 1]) and label volume (uint8) of the whole template at ``spacing`` mm."""
    import nibabel as nib

    vol = {k: np.asarray(nib.load(p).dataobj, dtype=np.float32) / 255.0 for k, p in template_files().items()}
    stack = torch.from_numpy(np.stack([vol["t1"], vol["gm"], vol["wm"]]))
    if spacing > 1:
        stack = F.avg_pool3d(stack[None], spacing, ceil_mode=True)[0]
    t1, gm, wm = stack.numpy()
    csf = np.clip(1.0 - gm - wm, 0.0, None)
    labels = (np.argmax(np.stack([csf, gm, wm]), 0) + 1).astype(np.uint8)
    labels[t1 <= 0.2] = 0
    return t1, labels


def _crop_in_plane(slices: np.ndarray, head: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` slices cut to the box of ``head`` in H and W; every slice is kept."""
    rows, cols = np.nonzero(head.any(0))
    return slices[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _pad_to(a: np.ndarray, multiple: int) -> np.ndarray:
    pads = [(0, 0)] + [((-s % multiple) // 2, (-s % multiple) - (-s % multiple) // 2) for s in a.shape[1:]]
    return np.pad(a, pads)


@SOURCES.register("demo")
def demo(
    seed: int,
    /,
    *,
    plane: Literal["axial", "coronal", "sagittal"] = "axial",
    spacing: Literal[1, 2] = 2,  # mm; 2 mm trains about 4x faster than 1 mm
    # drop slices with less of the head than this; 0 keeps the volume's every slice, as a scan has them
    min_brain_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    n_blocks: Annotated[int, Field(ge=3, le=50)] = 20,  # contiguous blocks of slices (8 at 1 mm axial)
    val_blocks: Annotated[int, Field(ge=1)] = 4,
    test_blocks: Annotated[int, Field(ge=1)] = 4,
    split_seed: int = 0,  # fixed, so every run of a study sees the same test slices
) -> SegData:
    """Brain tissue (CSF, grey and white matter) on 2D slices of the MNI ICBM152 2009 T1 template."""
    if val_blocks + test_blocks >= n_blocks:
        raise DataError(f"demo: val_blocks + test_blocks ({val_blocks + test_blocks}) must be "
                        f"less than n_blocks ({n_blocks}) to leave training slices")
    t1, labels = load_volume(spacing)
    axis = PLANE_AXIS[plane]
    images, masks = (_crop_in_plane(np.moveaxis(v, axis, 0), np.moveaxis(labels, axis, 0) > 0) for v in (t1, labels))
    images, masks = _pad_to(images, 16), _pad_to(masks, 16)
    keep = (masks > 0).mean((1, 2)) >= min_brain_fraction
    images, masks = images[keep], masks[keep]
    blocks = np.array_split(np.arange(len(images)), n_blocks)
    order = np.random.default_rng(split_seed).permutation(n_blocks)
    chosen = {
        "val": order[:val_blocks],
        "test": order[val_blocks : val_blocks + test_blocks],
        "train": order[val_blocks + test_blocks :],
    }
    splits, slices, cases = {}, {}, {}
    for name, block_ids in chosen.items():
        index = np.sort(np.concatenate([blocks[b] for b in block_ids]))
        slices[name] = index.tolist()
        cases[name] = [[f"block{b:02d}", len(blocks[b])] for b in sorted(block_ids)]  # a block is a case
        splits[name] = Split(torch.from_numpy(images[index][:, None].copy()),
                             torch.from_numpy(masks[index].astype(np.int64)))
    # slices: the index of each split's slices among the kept slices of the plane, in order
    # cases: the blocks of each split, in order; spacing: every voxel is spacing mm on each side
    info = {"source": "demo", "plane": plane, "spacing_mm": spacing, "copyright": COPYRIGHT, "slices": slices,
            "cases": cases, "spacing": [float(spacing)] * 3}
    return SegData(class_names=list(CLASS_NAMES), info=info, **splits)
