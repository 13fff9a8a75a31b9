"""Predictions in the input's own form (NIfTI volumes, PNG masks) and per-case 3D Dice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from tests.conftest import tiny_tree
from tests.data.writers import AFFINE, SHAPE, write_msd, write_nnunet

from segtune.cli import main
from segtune.config import build_config
from segtune.errors import DataError
from segtune.training.metrics import dice_per_class
from segtune.training.postprocess import apply_postprocessing, read_postprocessing, write_postprocessing
from segtune.training.predict import evaluate_run, group_channels, predict_files
from segtune.training.loop import train


def train_on(tmp_path, data: dict, name: str = "run", *, epochs: int = 1, lr: float = 0.01):
    config = build_config(tiny_tree(data=data, train={"epochs": epochs, "batch_size": 8, "patience": 0,
                                                         "device": "cpu"}, optimizer={"name": "adam", "lr": lr}))
    return train(config, out_dir=tmp_path / name, verbose=False).run_dir


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nnunet")
    root = write_nnunet(tmp / "data", n_cases=5, n_channels=2)
    return train_on(tmp, {"source": "nifti", "path": str(root), "axis": 2}), root


def test_evaluate_reports_3d_dice_per_case_and_their_mean(nnunet_run):
    run, _ = nnunet_run
    metrics, names = evaluate_run(run, split="test")
    assert names == ["background", "liver", "tumour"]
    (case, dice), = metrics["per_case"].items()  # 5 cases: one test case
    assert case.startswith("case_") and set(dice) == set(names)
    assert metrics["case_mean_dice_per_class"] == pytest.approx(dice)
    # one case: its 3D Dice equals the Dice of all voxels pooled
    assert metrics["dice_per_class"] == pytest.approx(dice)


def test_evaluate_all_cases_of_another_dataset(nnunet_run, tmp_path):
    run, _ = nnunet_run
    other = write_nnunet(tmp_path / "other", n_cases=3, n_channels=2)
    metrics, _ = evaluate_run(run, split="all", overrides=[f"data.path={other}"])
    assert sorted(metrics["per_case"]) == ["case_000", "case_001", "case_002"]


def test_predict_writes_volumes_with_the_source_affine_and_header(nnunet_run, tmp_path):
    run, root = nnunet_run
    written = predict_files(run, [root / "imagesTr"], tmp_path / "pred")
    assert [p.name for p in written] == [f"case_{i:03d}.nii.gz" for i in range(5)]
    out, source = nib.load(written[0]), nib.load(root / "imagesTr" / "case_000_0000.nii.gz")
    assert out.shape == SHAPE
    assert np.allclose(out.affine, AFFINE)
    assert out.header.get_zooms() == source.header.get_zooms()
    assert out.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}


def test_cli_evaluate_prints_the_case_table(nnunet_run, capsys):
    run, _ = nnunet_run
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3D Dice per case" in out and "mean over cases" in out


def test_channel_files_must_match_the_model(tmp_path):
    files = [tmp_path / "a_0000.nii.gz", tmp_path / "a_0002.nii.gz"]
    with pytest.raises(DataError, match=r"a_0000\.nii\.gz: case 'a' has channel files .* takes 2 channel"):
        group_channels(files, 2)
    assert group_channels([tmp_path / "b_0000.nii.gz", tmp_path / "c.nii"], 1) == {
        "b": (tmp_path / "b_0000.nii.gz",), "c": (tmp_path / "c.nii",)}


def test_predict_a_4d_channels_last_volume(nnunet_run, tmp_path):
    run, _ = nnunet_run
    msd = write_msd(tmp_path / "msd", n_cases=1, n_channels=2)
    (written,) = predict_files(run, [msd / "imagesTr" / "vol_0.nii.gz"], tmp_path / "pred")
    assert written.name == "vol_0.nii.gz"
    assert nib.load(written).shape == SHAPE


def test_evaluate_uses_every_slice_and_the_training_normalisation(tmp_path):
    # trained on half the training slices with the dataset's z-score: evaluating another dataset
    # uses all its slices (so every case is whole) and the statistics stored in the checkpoint
    root = write_nnunet(tmp_path / "data", n_cases=5, n_channels=1)
    run = train_on(tmp_path, {"source": "nifti", "path": str(root), "axis": 2, "train_fraction": 0.5,
                              "normalize": "zscore_dataset"})
    import json

    summary = json.loads((run / "summary.json").read_text())
    metrics, _ = evaluate_run(run, split="val")
    assert metrics["dice_per_class"] == pytest.approx(summary["val"]["dice_per_class"])
    other = write_nnunet(tmp_path / "other", n_cases=3, n_channels=1)
    metrics, _ = evaluate_run(run, split="all", overrides=[f"data.path={other}"])
    assert sorted(metrics["per_case"]) == ["case_000", "case_001", "case_002"]


def test_evaluate_uses_the_runs_precision_so_its_numbers_are_the_summarys(tmp_path):
    # a bf16 run evaluated in fp32 gave 0.2012 against the summary's 0.1993 on this task
    tree = tiny_tree(train={"epochs": 8, "batch_size": 8, "patience": 0, "precision": "bf16"},
                     optimizer={"name": "adam", "lr": 0.03})
    result = train(build_config(tree), out_dir=tmp_path / "run", verbose=False)
    metrics, _ = evaluate_run(result.run_dir, split="test")
    assert result.summary["test"]["dice_mean"] > 0.1  # the model predicts foreground: there is something to compare
    assert metrics["dice_mean"] == result.summary["test"]["dice_mean"]


def pad_with_empty_slices(root, n: int) -> None:
    """Add ``n`` background-only slices above every volume of a dataset (as the empty slices above a head)."""
    for path in sorted(root.glob("*Tr/*.nii.gz")):
        image = nib.load(path)
        array = np.asarray(image.dataobj)
        padded = np.concatenate([array, np.zeros((*array.shape[:2], n), array.dtype)], axis=2)
        nib.save(nib.Nifti1Image(padded, image.affine), str(path))


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory):
    """A run that learnt something (20 epochs) on volumes with 4 empty slices added above each case;
    slices under 20 % foreground (those 4 and the ends of each case) were dropped from training."""
    tmp = tmp_path_factory.mktemp("padded")
    root = write_nnunet(tmp / "data", n_cases=6)
    pad_with_empty_slices(root, 4)
    run = train_on(tmp, {"source": "nifti", "path": str(root), "axis": 2, "min_foreground_fraction": 0.2},
                   epochs=20, lr=0.03)
    return run, root


def test_evaluate_scores_whole_volumes_though_empty_slices_were_not_trained_on(padded_run, tmp_path):
    # each case is scored over all its 10 slices: the 3D Dice of the volume that predict writes
    run, root = padded_run
    metrics, names = evaluate_run(run, split="all")
    assert sorted(metrics["per_case"]) == [f"case_{i:03d}" for i in range(6)]
    written = predict_files(run, [root / "imagesTr"], tmp_path / "pred")
    for path in written:
        case = path.name.removesuffix(".nii.gz")
        pred = np.asarray(nib.load(path).dataobj).astype(np.int64)
        label = np.asarray(nib.load(root / "labelsTr" / path.name).dataobj).astype(np.int64)
        assert pred.shape == label.shape == (8, 8, 10)
        dice = dice_per_class(torch.from_numpy(pred), torch.from_numpy(label), 3).tolist()
        assert [metrics["per_case"][case][n] for n in names] == pytest.approx(dice)
    for name in names:
        assert metrics["case_mean_dice_per_class"][name] == pytest.approx(
            np.mean([c[name] for c in metrics["per_case"].values()]))


def test_evaluate_postprocess_chooses_on_val_and_reports_both(padded_run, capsys):
    run, _ = padded_run
    assert main(["evaluate", str(run), "--postprocess"]) == 0
    out = capsys.readouterr().out
    assert "keep the largest component (chosen on val)" in out and out.count("3D Dice per case") == 2
    saved = read_postprocessing(run)
    assert set(saved["keep_largest_component"]) == {"liver", "tumour"} and saved["checkpoint"] == "best"
    val = saved["val_case_mean_dice"]
    for name, keep in saved["keep_largest_component"].items():  # chosen only where it raised the val Dice
        assert (val["with"][name] > val["without"][name]) if keep else (val["with"][name] == val["without"][name])
    metrics, _ = evaluate_run(run, split="val", postprocess=True)
    assert metrics["postprocessed"]["case_mean_dice_per_class"] == pytest.approx(val["with"])
    assert metrics["case_mean_dice_per_class"] == pytest.approx(val["without"])


def test_predict_postprocess_applies_the_saved_choice(padded_run, tmp_path):
    run, root = padded_run
    write_postprocessing(run, {"liver": True, "tumour": True}, checkpoint="best",
                         class_names=["background", "liver", "tumour"], val_dice={})
    plain = predict_files(run, [root / "imagesTr"], tmp_path / "plain")
    cleaned = predict_files(run, [root / "imagesTr"], tmp_path / "cleaned", postprocess=True)
    changed = 0
    for p, q in zip(plain, cleaned):
        raw = np.asarray(nib.load(p).dataobj)
        expected = apply_postprocessing(raw, {"liver": True, "tumour": True}, ["background", "liver", "tumour"])
        assert np.array_equal(np.asarray(nib.load(q).dataobj), expected)
        changed += int((raw != expected).sum())
    assert changed > 0  # the model's stray voxels were there to remove


def test_predict_postprocess_chooses_it_first_when_none_is_saved(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    run = train_on(tmp_path, {"source": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8, "size": 32,
                              "n_classes": 3})
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    assert main(["predict", str(run), str(images), "--out", str(tmp_path / "masks"), "--postprocess"]) == 0
    assert (tmp_path / "masks" / "a.png").is_file()
    assert set(read_postprocessing(run)["keep_largest_component"]) == {"class_1", "class_2"}


class WindowSpy:
    """Records the image batches that the evaluation module predicts by sliding windows."""

    def __init__(self, monkeypatch):
        import segtune.training.evaluate as evaluate

        self.calls, original = [], evaluate.window_logits

        def spy(predictor, images, patch_size, *, batch_size):
            self.calls.append((tuple(images.shape[2:]), tuple(patch_size)))
            return original(predictor, images, patch_size, batch_size=batch_size)

        monkeypatch.setattr(evaluate, "window_logits", spy)


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    tree = tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0, "device": "cpu", "patch_size": [16, 16]})
    tree["data"].update(size=32, n_classes=3)
    result = train(build_config(tree), out_dir=tmp_path_factory.mktemp("patch") / "run", verbose=False)
    return result.run_dir, result.summary


def test_evaluate_of_a_patch_trained_run_slides_its_windows_and_scores_as_its_summary(patch_run, monkeypatch):
    run, summary = patch_run
    spy = WindowSpy(monkeypatch)
    metrics, _ = evaluate_run(run, split="test")
    assert spy.calls and set(spy.calls) == {((32, 32), (16, 16))}  # whole 32 x 32 images, 16 x 16 windows
    assert metrics["dice_per_class"] == pytest.approx(summary["test"]["dice_per_class"])
    assert torch.load(run / "best.pt", weights_only=True)["meta"]["patch_size"] == [16, 16]
    n = len(spy.calls)
    evaluate_run(run, split="test", postprocess=True)  # the post-processing is chosen on windowed val predictions
    assert len(spy.calls) > n + 1


def test_predict_of_a_patch_trained_run_slides_windows_over_an_image_of_any_size(patch_run, monkeypatch, tmp_path):
    from PIL import Image

    run, _ = patch_run
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40), dtype=np.uint8)).save(tmp_path / "a.png")
    spy = WindowSpy(monkeypatch)
    written, = predict_files(run, [tmp_path / "a.png"], tmp_path / "out")
    assert spy.calls == [((24, 40), (16, 16))]
    assert np.asarray(Image.open(written)).shape == (24, 40)
