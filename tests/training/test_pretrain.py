"""Encoder naming, autoencoder pre-training, and training from a pre-trained (frozen) encoder."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml
from tests.conftest import tiny_tree

from segtune.cli import main
from segtune.config import build_config
from segtune.errors import ConfigError, DataError
from segtune.components.models import MODELS, build_model, encoder_state
from segtune.training.pretrain import Autoencoder
from segtune.training.loop import train
from segtune.training.runtime import load_data

TINY_MODELS = {
    "unet": {"depth": 2, "base": 4},
    "monai_unet": {"channels": [4, 8, 16], "num_res_units": 1, "norm": "instance"},
    "resnet34_unet": {"decoder_channels": [16, 8, 8, 8, 8]},
}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_names_an_encoder_the_autoencoder_reconstructs_through(name):
    model = build_model(name, TINY_MODELS[name], 1, 3)
    encoder = encoder_state(model)
    assert encoder and set(encoder) < set(model.net.state_dict())  # a proper part of the network
    x = torch.randn(2, 1, 30, 34)  # odd sizes: padded for the encoder, cropped back
    assert Autoencoder(model, 1)(x).shape == x.shape


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """`segtune pretrain` of the tiny U-Net's encoder (1 epoch): its printout, run directory and data."""
    folder = tmp_path_factory.mktemp("pre")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree(train={"epochs": 1, "batch_size": 8})))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["pretrain", str(folder / "tiny.yaml"), "--quiet", "--out", str(folder / "run")]) == 0
    return printed.getvalue(), folder / "run", load_data(build_config(tiny_tree()))


def test_pretrain_writes_the_encoder_its_errors_and_a_report(pretrained):
    printed, run_dir, _ = pretrained
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["val"]["mse"] > 0 and s["val"]["mae"] > 0 and s["epochs_run"] == 1
    assert "validation MSE" in printed and f"model.encoder_weights={s['encoder']}" in printed
    for name in ("encoder.pt", "reconstructions.png", "report.md", "report.html", "metrics.csv"):
        assert (run_dir / name).stat().st_size > 0
    md = (run_dir / "report.md").read_text()
    assert f"validation MSE {s['val']['mse']:.4f}" in md
    assert "](figures/reconstructions.png)" in md and "](figures/mse.png)" in md
    # `segtune report` reads a pre-training run too
    assert main(["report", str(run_dir), "--out", str(run_dir / "again")]) == 0
    assert (run_dir / "again" / "report.md").read_text() == md
    assert all(k.startswith("down.") for k in torch.load(s["encoder"], weights_only=True))


def _encoder_after(tmp_path, data, pretrained_path, epochs, **model_options):
    config = build_config(tiny_tree(model={**tiny_tree()["model"], "encoder_weights": pretrained_path,
                                           **model_options}, train={"epochs": epochs, "batch_size": 8}))
    result = train(config, out_dir=tmp_path, data=data, verbose=False)
    last = torch.load(result.run_dir / "last.pt", weights_only=True)["model"]
    return {k.removeprefix("net."): v for k, v in last.items() if k.startswith("net.down.")}


@pytest.mark.parametrize("epochs, options, encoder_moves", [
    (1, {"freeze_encoder": True}, False),                              # frozen
    (2, {"freeze_encoder": True, "unfreeze_encoder_after": 1}, True),  # fine-tuned from epoch 2
    (1, {}, True),                                                     # fine-tuned from the start
])
def test_training_starts_from_the_encoder_and_keeps_it_frozen_when_asked(pretrained, tmp_path, epochs, options,
                                                                         encoder_moves):
    _, run_dir, data = pretrained
    saved = torch.load(run_dir / "encoder.pt", weights_only=True)
    after = _encoder_after(tmp_path, data, str(run_dir / "encoder.pt"), epochs, **options)
    weights = [k for k in saved if k.endswith("weight")]
    unchanged = all(torch.equal(after[k], saved[k]) for k in weights)
    assert unchanged is not encoder_moves


@pytest.mark.parametrize("steps, encoder_moves", [(2, False), (3, True)])
def test_under_a_step_budget_unfreezing_counts_validations(pretrained, tmp_path, steps, encoder_moves):
    # validated every step, unfrozen after 2 validations: frozen for steps 1-2, trained from step 3
    # (not after 2 epochs, which would be step 5)
    _, run_dir, data = pretrained
    saved = torch.load(run_dir / "encoder.pt", weights_only=True)
    config = build_config(tiny_tree(
        model={**tiny_tree()["model"], "encoder_weights": str(run_dir / "encoder.pt"), "freeze_encoder": True,
               "unfreeze_encoder_after": 2},
        train={"steps": steps, "val_every_steps": 1, "batch_size": 8, "patience": 0, "num_threads": 1}))
    last = torch.load(train(config, out_dir=tmp_path, data=data, verbose=False).run_dir / "last.pt",
                      weights_only=True)["model"]
    unchanged = all(torch.equal(last[f"net.{k}"], saved[k]) for k in saved if k.endswith("weight"))
    assert unchanged is not encoder_moves


def test_an_encoder_of_another_model_is_a_clear_error(pretrained):
    _, run_dir, _ = pretrained
    with pytest.raises(DataError, match="same model.name and model options"):
        build_model("unet", {"depth": 2, "base": 8, "encoder_weights": str(run_dir / "encoder.pt")}, 1, 3)


def test_unfreezing_needs_a_frozen_encoder():
    tree = tiny_tree(model={"name": "unet", "unfreeze_encoder_after": 2})
    with pytest.raises(ConfigError, match="needs model.freeze_encoder=true"):
        build_config(tree)


def test_a_validation_mse_that_is_never_a_number_is_a_clear_error(tmp_path):
    # a NaN pixel in a validation image makes every epoch's validation MSE NaN: no encoder is best
    from segtune.errors import TrainingDiverged
    from segtune.training.pretrain import pretrain

    config = build_config(tiny_tree(train={"epochs": 2, "batch_size": 8}))
    data = load_data(config)
    data.val.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"validation MSE was nan in every one of 2 validations, never a number; "
                                               r"lower optimizer.lr \(now 0.01\) or check the validation images"):
        pretrain(config, out_dir=tmp_path / "run", data=data, verbose=False)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_reconstruction_figure_leaves_the_callers_matplotlib_backend(tmp_path):
    import matplotlib

    from segtune.training.pretrain import plot_reconstructions

    autoencoder = Autoencoder(build_model("unet", TINY_MODELS["unet"], 1, 3), 1)
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's choice, not the Agg a figure writer might force
    try:
        path = plot_reconstructions(autoencoder, torch.randn(2, 1, 16, 16), tmp_path / "r.png", torch.device("cpu"))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
