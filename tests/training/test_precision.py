"""train.precision: auto: timed once per machine and model shape, cached, and the same numbers after."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from segtune.config import build_config
from segtune.training.loop import train
import segtune.training.precision as precision_module
from segtune.training.precision import (CACHE_ENV, CHOICE_ENV, as_trained, cache_path, fastest, gpu_precision,
                                     native_bf16)

from segtune.errors import ConfigError
from tests.conftest import tiny_tree

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_auto_is_timed_once_then_read_from_the_cache_and_trains_as_it_says(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(CHOICE_ENV, raising=False)  # the suite's fixed choice off: time it
    cfg = build_config(tiny_tree())  # precision left at its default, auto
    first = train(cfg, out_dir=tmp_path / "a", verbose=False).summary
    assert first["precision"]["source"] == "timed"
    # bf16 is timed only on a CPU with bf16 units
    bf16 = {"bf16", "bf16+channels_last"} if native_bf16() is not False else set()
    assert set(first["precision"]["seconds_per_step"]) == {"fp32", "fp32+channels_last"} | bf16
    second = train(cfg, out_dir=tmp_path / "b", verbose=False).summary
    # read from the cache: the same choice, and the timing drew nothing from the run's generators
    assert second["precision"]["source"] == "cached"
    assert second["precision"]["precision"] == first["precision"]["precision"]
    assert second["test"] == first["test"]
    assert yaml_precision(tmp_path / "b") == "auto"  # config.yaml keeps what was asked
    # another loss is the same model shape: no second timing
    other = build_config(tiny_tree(loss={"name": "dice"}))
    assert train(other, out_dir=tmp_path / "d", verbose=False).summary["precision"]["source"] == "cached"
    # the cache entry of this machine and shape, made to say bf16 without channels_last: the run takes it
    entries = json.loads(cache_path().read_text())
    (key,) = entries
    entries[key].update(precision="bf16", channels_last=False)
    cache_path().write_text(json.dumps(entries))
    third = train(cfg, out_dir=tmp_path / "c", verbose=False).summary["precision"]
    assert (third["precision"], third["channels_last"], third["source"]) == ("bf16", False, "cached")


@pytest.mark.parametrize("timings, chosen", [
    # bf16 with channels_last 0.15 s is more than 10 % under the best fp32 (0.18): taken
    ({("fp32", False): 0.20, ("fp32", True): 0.18, ("bf16", False): 0.17, ("bf16", True): 0.15}, ("bf16", True)),
    # 0.17 is only 6 % under 0.18: the best fp32 layout stays
    ({("fp32", False): 0.20, ("fp32", True): 0.18, ("bf16", False): 0.17, ("bf16", True): 0.19}, ("fp32", True)),
    ({("fp32", False): 0.10, ("fp32", True): 0.30, ("bf16", False): 0.50, ("bf16", True): 0.40}, ("fp32", False)),
    ({("fp32", False): 0.30, ("fp32", True): 0.31}, ("fp32", False)),  # no bf16 units: fp32 only timed
])
def test_auto_trains_in_the_fastest_candidate_and_bf16_only_where_it_pays(tmp_path, monkeypatch, timings, chosen):
    assert fastest(timings) == chosen
    # and a run takes what its timing chose, with the timings in its summary
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(CHOICE_ENV, raising=False)
    monkeypatch.setattr(precision_module, "_time_candidates", lambda config, data, device: timings)
    summary = train(build_config(tiny_tree(train={"epochs": 1})), out_dir=tmp_path / "run", verbose=False).summary
    assert (summary["precision"]["precision"], summary["precision"]["channels_last"]) == chosen
    assert summary["precision"]["seconds_per_step"] == {
        f"{p}{'+channels_last' if cl else ''}": t for (p, cl), t in timings.items()}


def test_auto_on_a_gpu_never_takes_an_emulated_bf16(monkeypatch):
    # torch's check counts an emulated bf16 unless told not to: a V100 or T4 would train in it, slowly
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert gpu_precision() == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert gpu_precision() == "bf16"


@pytest.mark.parametrize("lines, native", [
    ("flags\t\t: fpu sse2 avx avx2 fma\n", False),  # an AVX2 EPYC
    ("flags\t\t: fpu avx2 avx512f avx512_bf16\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
    ("flags\t\t: fpu avx2 amx_tile amx_bf16\n", True),  # a Sapphire Rapids Xeon
    ("Features\t: fp asimd sve bf16\n", True),  # an Arm Neoverse
    ("processor\t: 0\n", None),  # no flags: unknown, so bf16 is timed
])
def test_bf16_units_are_read_from_the_cpu_flags(tmp_path, lines, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(lines)
    assert native_bf16(cpuinfo) is native
    assert native_bf16(tmp_path / "missing") is None


def test_a_set_precision_is_used_as_given_and_an_evaluation_predicts_as_trained(tmp_path):
    cfg = build_config(tiny_tree(), ["train.precision=bf16", "train.channels_last=false"])
    summary = train(cfg, out_dir=tmp_path / "run", verbose=False).summary
    assert summary["precision"] == {"precision": "bf16", "channels_last": False, "source": "set",
                                    "seconds_per_step": {}}
    auto = build_config(tiny_tree())
    trained = as_trained(auto, {"precision": "bf16", "channels_last": False}).train
    assert (trained.precision, trained.channels_last) == ("bf16", False)
    assert as_trained(cfg, {"precision": "fp32"}).train.precision == "bf16"  # a set precision stays


def yaml_precision(run_dir) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["precision"]


@needs_gpu
def test_fp16_with_the_grad_scaler_trains_and_resumes_on_a_gpu(tmp_path):
    # the scaler's state is in last.pt: a resumed fp16 run ends with the uninterrupted run's numbers
    cfg = build_config(tiny_tree(), ["train.device=cuda", "train.precision=fp16", "train.epochs=3"])
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)
    assert full.summary["precision"]["precision"] == "fp16" and full.summary["device"].startswith("cuda")

    def crash(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash], verbose=False)
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.summary["test"] == full.summary["test"]


@needs_gpu
def test_auto_on_a_gpu_is_its_half_precision_without_timing(tmp_path):
    cfg = build_config(tiny_tree(), ["train.device=cuda"])
    choice = train(cfg, out_dir=tmp_path / "run", verbose=False).summary["precision"]
    assert choice["precision"] == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    assert choice["source"] == "device" and choice["seconds_per_step"] == {}


def test_the_environment_sets_what_auto_is_without_timing_and_a_bad_value_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CHOICE_ENV, "bf16+channels_last")
    summary = train(build_config(tiny_tree(train={"epochs": 1})), out_dir=tmp_path / "run", verbose=False).summary
    assert summary["precision"] == {"precision": "bf16", "channels_last": True, "source": "env",
                                    "seconds_per_step": {}}
    assert not cache_path().exists()  # nothing timed, nothing cached
    monkeypatch.setenv(CHOICE_ENV, "fp64")
    with pytest.raises(ConfigError, match="SEGTUNE_PRECISION='fp64'.*fp32, bf16, fp32\\+channels_last"):
        train(build_config(tiny_tree(train={"epochs": 1})), out_dir=tmp_path / "bad", verbose=False)
