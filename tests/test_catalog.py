"""`segtune list`: every registered component, each option with its type and default, read from the registries."""

from __future__ import annotations

import pytest

from segtune.cli import main
from segtune.catalog import REGISTRIES, format_components, type_name
from segtune.errors import ConfigError


def test_list_prints_every_component_and_every_option_with_its_default(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for section, registry in REGISTRIES.items():
        for name in registry.names():
            assert f"  {name}: " in text
            for option, default in registry.defaults(name).items():
                shown = list(default) if isinstance(default, tuple) else default
                assert f"{section}.{option} = {shown!r}" in text
    # Common fields of a section are listed too, and constraints are readable.
    assert "scheduler.warmup_epochs = 0    (int >=0)" in text
    assert "loss.alpha = 0.25    (float >=0.0 <=1.0 or null)" in text


def test_list_one_section_and_suggest_for_a_typo(capsys):
    assert main(["list", "optimizer"]) == 0
    out = capsys.readouterr().out
    assert "adamw:" in out and "focal:" not in out
    with pytest.raises(ConfigError, match="did you mean 'loss'"):
        format_components(["losss"])


def test_list_shows_the_train_settings_with_their_defaults(capsys):
    from segtune.config import TrainConfig

    assert main(["list", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train  (settings of every run)")
    for option, field in TrainConfig.model_fields.items():
        assert f"train.{option} = {field.default!r}" in out
    assert "train.epochs = 40    (int >=1 or null)" in out and "adamw:" not in out


def test_type_names_are_short():
    from typing import Annotated, Literal

    from pydantic import Field

    assert type_name(Literal["a", "b"] | None) == "'a'|'b' or null"
    assert type_name(Annotated[int, Field(ge=1)]) == "int >=1"
    assert type_name(list[Annotated[float, Field(gt=0)]]) == "list[float >0]"
