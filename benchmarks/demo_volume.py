"""The demo's model on the whole template volume: 3D Dice of every slice against the test-slice Dice.

A model trained on the demo's slices is asked to label the whole MNI ICBM152 2009 T1 template
(every axial slice, the empty ones above the head included), as ``segtune predict`` does for
any NIfTI volume. Printed: its 3D Dice per class against the demo's labels of the whole volume,
the test-slice Dice of the run's summary, their difference, and the tissue it puts on slices
that hold no head at all. A model that never saw an empty slice in training labels them as
tissue; the demo keeps every slice of the volume (``data.min_brain_fraction=0``) so it does not.
A whole slice holds more air than the head-cropped slices the model trained on, so a per-slice
z-score (``data.normalize=zscore``) gives its tissue other values; the demo normalises with the
training set's mean and std (``zscore_dataset``), the same values either way.

Usage::

    python benchmarks/demo_volume.py                          # trains demo.yaml (about 5 minutes on 2 idle AVX2 cores)
    python benchmarks/demo_volume.py --set data.min_brain_fraction=0.05   # slices with < 5 % head dropped
    python benchmarks/demo_volume.py --set data.normalize=zscore          # each slice z-scored on its own
    python benchmarks/demo_volume.py --run runs/demo           # an existing demo run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from segtune.config import load_config
from segtune.data.demo import CLASS_NAMES, PLANE_AXIS, load_volume
from segtune.study.demo import demo_config_path
from segtune.training.loop import train
from segtune.training.predict import predict_files, run_config


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def volume_dice(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """3D Dice of each foreground class over the whole volume."""
    dice = {}
    for c, name in enumerate(CLASS_NAMES[1:], start=1):
        p, t = pred == c, target == c
        dice[name] = float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
    return dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing run of the demo source (default: train demo.yaml now)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the run trained here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo-volume-"))
    started = time.perf_counter()
    if args.run:
        run = Path(args.run)
    else:
        run = work / "run"
        train(load_config(demo_config_path(), args.set), out_dir=run, verbose=False)
    seconds = time.perf_counter() - started
    options = run_config(run).data.options
    if PLANE_AXIS[options["plane"]] != 2:
        raise SystemExit("the template volume is cut into axial slices by predict; train on plane=axial")
    t1, labels = load_volume(options["spacing"])
    volume = work / "template.nii.gz"
    nib.save(nib.Nifti1Image(t1, np.diag([options["spacing"]] * 3 + [1])), str(volume))
    [written] = predict_files(run, [volume], work / "pred")
    pred = np.asarray(nib.load(str(written)).dataobj)
    whole = volume_dice(pred, labels)
    summary = json.loads((run / "summary.json").read_text())
    test = {name: summary["test"]["dice_per_class"][name] for name in CLASS_NAMES[1:]}
    empty = ~(labels > 0).any((0, 1))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_name()}, {platform.machine()}, load average {load}; run {run} ({seconds:.0f} s); "
          f"overrides: {args.set or 'none'}")
    print(f"\n{'class':<14}{'test slices':>12}{'whole volume':>14}{'difference':>12}")
    for name in CLASS_NAMES[1:]:
        print(f"{name:<14}{test[name]:>12.3f}{whole[name]:>14.3f}{whole[name] - test[name]:>+12.3f}")
    mean_test, mean_whole = np.mean(list(test.values())), np.mean(list(whole.values()))
    print(f"{'mean':<14}{mean_test:>12.3f}{mean_whole:>14.3f}{mean_whole - mean_test:>+12.3f}")
    print(f"\n{int(empty.sum())} of {len(empty)} axial slices hold no head; predicted tissue on them: "
          f"{int((pred[:, :, empty] > 0).sum())} voxels ({(pred[:, :, empty] > 0).sum() / max((pred > 0).sum(), 1):.1%} "
          f"of the predicted tissue)")


if __name__ == "__main__":
    main()
