"""Config loading: every problem found up front, each naming its field, value and rule."""

import pytest
import yaml

from segtune.config import apply_changes, build_config, load_config
from segtune.errors import ConfigError

from tests.conftest import tiny_tree


def test_defaults_are_filled_in_the_resolved_config():
    cfg = build_config({})
    resolved = cfg.to_dict()
    assert resolved["optimizer"] == {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}
    assert resolved["train"]["patience"] == 10
    # the resolved config validates to the same config
    assert build_config(resolved).to_dict() == resolved


def test_overrides_are_parsed_as_yaml_values():
    cfg = build_config(tiny_tree(), ["optimizer.name=sgd", "optimizer.lr=5e-4", "optimizer.nesterov=true",
                                     "train.epochs=7", "data.resize=[16, 16]"])
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.options["lr"] == 5e-4
    assert cfg.optimizer.options["nesterov"] is True
    assert cfg.train.epochs == 7 and cfg.data.resize == (16, 16)


def test_all_errors_reported_together_with_paths():
    with pytest.raises(ConfigError) as err:
        build_config(tiny_tree(), ["model.name=unett", "optimizer.lrr=3", "train.epochs=0", "trian.epochs=3"],
                     origin="my.yaml")
    msg = str(err.value)
    assert msg.startswith("my.yaml: invalid config")
    assert "model: unknown model 'unett' (did you mean 'unet'?)" in msg
    assert "optimizer: optimizer 'adam' has no option 'lrr' (did you mean 'lr'?)" in msg
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in msg
    assert "trian: unknown key; remove it or check its spelling" in msg


def test_option_the_optimizer_lacks_is_an_error():
    # Adam has no momentum: an error, never silently dropped
    with pytest.raises(ConfigError, match="optimizer 'adam' has no option 'momentum'"):
        build_config(tiny_tree(), ["optimizer.momentum=0.9"])


@pytest.mark.parametrize("override, message", [
    ("data.train_fraction=1.5", r"data.train_fraction: Input should be less than or equal to 1"),
    ("optimizer.lr=-1", r"lr=-1: Input should be greater than 0"),
    ("train.precision=fp8", r"train.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ("train.device=tpu", r"device must be auto, cpu, cuda, cuda:N or mps"),
    ("train.device=cuda:x", r"device must be auto, cpu, cuda, cuda:N or mps, not .cuda:x."),
    ("train.batch_size=many", r"train.batch_size: Input should be a valid integer"),
    ("data.source=nowhere", r"unknown data source 'nowhere'"),
])
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(tiny_tree(), [override])


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("null", None), ("3", 3)])
def test_num_threads_is_a_count_auto_or_null(value, expected):
    assert build_config(tiny_tree(), [f"train.num_threads={value}"]).train.num_threads == expected


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "true", "fast", "'2'"])
def test_num_threads_otherwise_is_one_clear_error(value):
    with pytest.raises(ConfigError) as err:
        build_config(tiny_tree(), [f"train.num_threads={value}"], origin="my.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith(  # one line, not one per member of the union
        "  train.num_threads: num_threads must be a positive whole number of CPU threads, auto (follow the CPUs "
        "other processes leave free) or null (every CPU this process may use but one, fixed) (got ")


@pytest.mark.parametrize("overrides, message", [
    # a rule between two options, checked when the config is read, not when training starts
    (["optimizer.name=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"],
     r"optimizer: optimizer.nesterov=true needs optimizer.momentum > 0"),
    # a size no network can take
    (["data.source=folder", "data.path=x", "data.size=[0,0]"], r"data: .*greater than or equal to 8"),
    (["data.source=nifti", "data.path=x", "data.size=[-3,4]"], r"data: .*greater than or equal to 8"),
])
def test_invalid_combinations_fail_before_any_data_is_read(overrides, message):
    tree = tiny_tree(data={"source": "synthetic"})
    with pytest.raises(ConfigError, match=message):
        build_config(tree, overrides)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        build_config({}, ["optimizer.lr"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        build_config(tiny_tree(), ["seed.x=1"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(listy)


def test_load_config_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree()))
    cfg = load_config(path, ["seed=3"])
    assert cfg.seed == 3 and cfg.data.options["size"] == 32
    assert cfg.to_dict() == build_config({**tiny_tree(), "seed": 3}).to_dict()  # the file, the override, nothing else


def test_an_override_that_switches_a_component_leaves_out_the_old_ones_options():
    # demo.yaml's step schedule has step_size and gamma, which cosine does not take
    tree = tiny_tree(scheduler={"name": "step", "step_size": 3, "gamma": 0.5})
    cfg = build_config(tree, ["scheduler.name=cosine", "scheduler.min_lr=1e-5"])
    assert cfg.scheduler.name == "cosine" and cfg.scheduler.options["min_lr"] == 1e-5
    assert "step_size" not in cfg.scheduler.options
    assert tree["scheduler"] == {"name": "step", "step_size": 3, "gamma": 0.5}  # the caller's tree is untouched
    # the same component keeps its options, and an option set with the switch is still checked
    assert build_config(tree, ["scheduler.name=step"]).scheduler.options["step_size"] == 3
    with pytest.raises(ConfigError, match="scheduler 'cosine' has no option 'gamma'"):
        build_config(tree, ["scheduler.name=cosine", "scheduler.gamma=0.1"])


def test_apply_changes_sets_dotted_paths_and_creates_sections():
    tree = {"optimizer": {"name": "adam", "lr": 0.1}}
    changed = apply_changes(tree, {"optimizer.lr": 0.01, "train.epochs": 3, "model.options.depth": 2, "seed": 1})
    assert changed == {"optimizer": {"name": "adam", "lr": 0.01}, "train": {"epochs": 3},
                       "model": {"options": {"depth": 2}}, "seed": 1}
    assert tree == {"optimizer": {"name": "adam", "lr": 0.1}}  # the caller's tree is untouched
    # a value given is copied: a later change below it does not write into the caller's mapping
    section = {"name": "sgd"}
    assert apply_changes({}, {"optimizer": section, "optimizer.lr": 0.5}) == {"optimizer": {"name": "sgd", "lr": 0.5}}
    assert section == {"name": "sgd"}


def test_apply_changes_switching_a_component_leaves_out_the_old_ones_options():
    tree = {"optimizer": {"name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 0.1}}
    # sgd takes lr and weight_decay, not betas; the same name keeps everything
    assert apply_changes(tree, {"optimizer.name": "sgd"}) == {"optimizer": {"name": "sgd", "lr": 0.01,
                                                                            "weight_decay": 0.1}}
    assert apply_changes(tree, {"optimizer.name": "adam"}) == tree
    # a whole section replaces the old one, options and all
    assert apply_changes(tree, {"optimizer": {"name": "sgd"}, "optimizer.lr": 0.1}) == {"optimizer": {"name": "sgd",
                                                                                                     "lr": 0.1}}
    # an unknown name is left to validation, which names it
    assert apply_changes(tree, {"optimizer.name": "sgdd"})["optimizer"]["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("changes, message", [
    ({"seed.x": 1}, r"^seed\.x: seed is a value, not a section \(seed=0\); set seed itself"),
    ({"train.epochs.n": 1}, r"^train\.epochs\.n: train\.epochs is a value, not a section \(train\.epochs=2\)"),
    ({"optimizer..lr": 1}, r"^'optimizer\.\.lr': a config path needs a name between every two dots"),
])
def test_apply_changes_errors_name_the_bad_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        apply_changes(tiny_tree(), changes)


UNSAFE_NAME = "must be a safe file name: letters, digits, '-', '_' and '.', not starting with '.'"


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..", ".", ".hidden", "a/b", "a\\b", "", "a b", "x\0y"])
def test_a_run_name_that_is_not_a_safe_file_name_is_refused(name):
    # the name becomes the run folder runs/<name>-<time>: it must not lead out of runs/
    with pytest.raises(ConfigError, match=f"my.yaml: invalid config\n  name: {UNSAFE_NAME}"):
        build_config(tiny_tree(name=name), origin="my.yaml")


def test_safe_run_names_are_kept():
    assert [build_config(tiny_tree(name=n)).name for n in ["tiny", "a.b-c_1", "-x", "2026"]] == \
        ["tiny", "a.b-c_1", "-x", "2026"]


def test_train_with_an_absolute_run_name_writes_nothing_outside_runs(tmp_path, capsys, monkeypatch):
    from segtune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_tree()))
    target = tmp_path / "elsewhere" / "x"
    for name in (str(target), "../elsewhere/x"):
        assert main(["train", "c.yaml", "--set", f"name={name}"]) == 2
        assert f"name: {UNSAFE_NAME}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no runs/, no elsewhere/
