"""Pre-training budgets in steps, the ``pretrain`` section of a run (cached once per setting), and
encoders from a deeper autoencoder than the segmenter."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from segtune.components.models import build_model, encoder_state, load_pretrained_encoder
from segtune.config import build_config
from segtune.errors import ConfigError, DataError
from segtune.training.loop import train
from segtune.training.pretrain import pretrain, pretrained_config

from tests.conftest import tiny_tree

OPTIONS = {"channels": [4, 8, 16], "num_res_units": 1}
SHALLOW = {"name": "monai_unet", **OPTIONS}
DEEP = [4, 8, 16, 32]


def test_pretraining_in_steps_validates_every_n_steps(tmp_path):
    # 16 images in batches of 8: 3 steps validated every 2 run 1.5 epochs, rows at steps 2 and 3
    config = build_config(tiny_tree(train={"steps": 3, "val_every_steps": 2, "batch_size": 8, "num_threads": 1}))
    result = pretrain(config, out_dir=tmp_path / "pre", verbose=False)
    rows = list(csv.DictReader(open(tmp_path / "pre" / "metrics.csv")))
    assert [(r["step"], r["epoch"]) for r in rows] == [("2", "1.0"), ("3", "1.5")]
    best = min(rows, key=lambda r: float(r["val_mse"]))
    assert result.summary["steps_run"] == 3 and result.summary["best_step"] == int(best["step"])
    assert result.summary["val"]["mse"] == pytest.approx(float(best["val_mse"]))


def test_a_deeper_encoder_loads_its_matching_levels(tmp_path):
    deep = build_model("monai_unet", {**OPTIONS, "channels": DEEP}, 1, 3)
    torch.save(encoder_state(deep), tmp_path / "encoder.pt")
    shallow = build_model("monai_unet", OPTIONS, 1, 3).net
    with pytest.warns(UserWarning, match=r"encoder levels 1-2 loaded, the bottom \(model.1.submodule.1.submodule\) "
                                         r"starts at random"):
        load_pretrained_encoder(shallow, tmp_path / "encoder.pt")
    loaded, saved = encoder_state(shallow), encoder_state(deep)
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded if k.startswith(("model.0.", "model.1.submodule.0.")))
    other = build_model("monai_unet", {"channels": [4, 12, 16], "num_res_units": 1}, 1, 3).net
    with pytest.raises(DataError, match=r"levels 2 \(model.1.submodule.0\), 3 \(model.1.submodule.1.submodule\) of "
                                        r"this UNet's 3-level encoder do not fit"):
        load_pretrained_encoder(other, tmp_path / "encoder.pt")


def test_a_pretrain_budget_pretrains_once_per_setting_and_starts_from_it(tmp_path):
    # a 4-level autoencoder for a 3-level segmenter; a run of the same setting with another seed
    # and a frozen encoder reuses it (the pre-training has its own seed, pretrain.seed)
    tree = tiny_tree(model=SHALLOW, train={"steps": 2, "batch_size": 8, "num_threads": 1},
                     pretrain={"steps": 2, "model": {"channels": DEEP}})
    first = train(build_config(tree), out_dir=tmp_path / "a", verbose=False)
    again = train(build_config(tree, ["seed=1", "model.freeze_encoder=true"]), out_dir=tmp_path / "b", verbose=False)
    cached = list((tmp_path / "pretrain").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["steps2"]
    pre = json.loads((cached[0] / "summary.json").read_text())
    assert first.summary["pretrain"]["val"] == again.summary["pretrain"]["val"] == pre["val"]
    # the run's config.yaml names the encoder it started from; its pretrain budget is spent
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["model"]["encoder_weights"] == first.summary["pretrain"]["encoder"] == str(cached[0] / "encoder.pt")
    assert saved["pretrain"]["steps"] is None


def test_a_pretrain_that_cannot_fit_fails_before_any_training(tmp_path):
    tree = tiny_tree(model=SHALLOW, pretrain={"steps": 2, "model": {"channels": [4, 12, 16, 32]}})
    with pytest.raises(DataError, match=r"levels 2 \(model.1.submodule.0\), 3 .* do not fit"):
        pretrained_config(build_config(tree), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("changes, message", [
    ({"pretrain": {"steps": 2, "epochs": 1}}, "pretrain.epochs=1 and pretrain.steps=2 are both set"),
    ({"pretrain": {"steps": 2, "model": {"chanels": [4]}}}, r"pre-training config .* invalid: pretrain.model: model 'unet' has no option 'chanels'"),
    ({"pretrain": {"steps": 2}, "model": {**SHALLOW, "encoder_weights": "e.pt"}},
     "pretrain.steps pre-trains the encoder and model.encoder_weights='e.pt' gives one; remove one"),
])
def test_a_bad_pretrain_section_is_a_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_config(tiny_tree(**changes))
