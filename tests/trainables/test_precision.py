"""bf16 / channels_last `auto`: the CPU probe, its per-node cache, the recorded values, warnings, resume."""
from __future__ import annotations

import json
import os

import pytest
import torch

from gce_search.trainables.config import resolve
from gce_search.trainables.models import build_model
from gce_search.trainables.precision import (CACHE_ENV, CACHE_FILE, _cache_key, cache_dir, choose, measure, pin_precision,
                                  variant_name)
from gce_search.trainables.registry import ConfigError
from gce_search.trainables.trial import run_trial

CNN = {"name": "small_cnn", "width": 4, "hidden": 16}


def _trial(**train) -> dict:
    return {"seed": 3, "data": {"name": "digits", "max_train": 256}, "model": dict(CNN),
            "loss": {"name": "cross_entropy"},
            "train": {"epochs": 2, "device": "cpu", "batch_size": 64, "threads": 1, **train},
            "calibration": {"method": "ats", "min_samples": 20}}


def _collect():
    results, dirs = [], []

    def reporter(metrics, checkpoint_dir):
        results.append(metrics)
        dirs.append(checkpoint_dir)

    return reporter, results, dirs


def _without_run_description(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("time/train_s", "time/eval_s", "train/images_per_s",
                                                    "device/info")}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh probe cache for one test (the environment variable is what trial processes read)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _seed_cache(rates: dict[str, float], batch: int = 32) -> None:
    """Write the node's cache entry for CNN on digits as if a probe had measured `rates` (threads 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        key = _cache_key(CNN, (1, 8, 8), batch)
    finally:
        torch.set_num_threads(previous)
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / CACHE_FILE).write_text(json.dumps({key: rates}))


def test_config_takes_auto_true_false_and_names_the_valid_values():
    assert resolve({})["train"]["bf16"] == "auto" and resolve({})["train"]["channels_last"] == "auto"
    for value in ("auto", True, False):
        assert resolve({"train": {"bf16": value, "channels_last": value}})["train"]["bf16"] == value
    with pytest.raises(ConfigError) as err:
        resolve({"train": {"bf16": "yes", "channels_last": 1}})
    assert err.value.problems == ["train.bf16: got 'yes'; valid: true, false or 'auto'",
                                  "train.channels_last: got 1; valid: true, false or 'auto'"]


def test_choose_keeps_float32_unless_a_variant_is_clearly_faster():
    rates = {"fp32": 100.0, "fp32+channels_last": 105.0, "bf16": 300.0, "bf16+channels_last": 250.0}
    assert choose(rates, "auto", "auto", conv=True) == (True, False, [])
    # 5% faster is within the probe's noise: float32, contiguous
    assert choose({**rates, "bf16": 20.0, "bf16+channels_last": 22.0}, "auto", "auto", conv=True) == \
        (False, False, [])
    assert choose({**rates, "bf16": 20.0, "bf16+channels_last": 22.0, "fp32+channels_last": 124.0}, "auto",
                  "auto", conv=True) == (False, True, [])
    # without convolutions channels_last is never chosen
    assert choose({"fp32": 100.0, "bf16": 300.0}, "auto", "auto", conv=False) == (True, False, [])
    # an explicit value is kept; an explicit true that is slower is warned about, with the measured ratio
    bf16, channels_last, warnings = choose({**rates, "bf16": 20.0, "bf16+channels_last": 21.0}, True, "auto",
                                           conv=True)
    assert (bf16, channels_last) == (True, False)
    assert warnings == ["train.bf16: true is 5.00x slower than false on this CPU (probe: bf16 20.0 img/s, fp32 "
                        "100.0 img/s); 'auto' chooses for the machine"]
    assert choose(rates, True, True, conv=True)[2] == [
        "train.channels_last: true is 1.20x slower than false on this CPU (probe: bf16+channels_last 250.0 img/s, "
        "bf16 300.0 img/s); 'auto' chooses for the machine"]
    assert choose(rates, False, False, conv=True) == (False, False, [])


def test_probe_leaves_the_model_and_every_rng_as_they_were():
    torch.manual_seed(11)
    model = build_model({"name": "small_cnn", "width": 4, "hidden": 16, "dropout": 0.3}, 1, 10, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rates = measure(model, (1, 8, 8), 10, 16, max_steps=2, min_time_s=0.0)
    assert set(rates) == {variant_name(b, c) for b in (False, True) for c in (False, True)}
    assert all(r > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and next(model.parameters()).is_contiguous()


def test_auto_is_probed_once_per_node_recorded_in_every_result_and_reproducible(cache):
    reporter, results, dirs = _collect()
    last = run_trial(_trial(), reporter)
    info = last["device/info"]
    assert info["decided_by"] == "probe" and info["device"] == "cpu" and info["threads"] == 1
    assert set(info["probe_images_per_s"]) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    for m in results:
        assert isinstance(m["train/bf16"], bool) and isinstance(m["train/channels_last"], bool)
        assert (m["train/bf16"], m["train/channels_last"]) == (info["bf16"], info["channels_last"])
    assert "device/info" in results[0]  # the first result already says how the trial runs
    table = json.loads((cache / CACHE_FILE).read_text())
    (key,) = table
    assert json.loads(key)["model"] == CNN and json.loads(key)["input"] == [1, 8, 8]
    assert json.loads(key)["threads"] == 1 and json.loads(key)["torch"] == str(torch.__version__)

    # The same trial again reads the node's cache; with the decision written out it gives the same numbers, bit
    # for bit: the probe changed no RNG state.
    reporter2, again, _ = _collect()
    assert run_trial(_trial(), reporter2)["device/info"]["decided_by"] == "cache"
    reporter3, explicit, _ = _collect()
    run_trial(_trial(bf16=info["bf16"], channels_last=info["channels_last"]), reporter3)
    assert [_without_run_description(m) for m in again] == [_without_run_description(m) for m in results]
    assert [_without_run_description(m) for m in explicit] == [_without_run_description(m) for m in results]
    for d in dirs:
        if d:
            import shutil

            shutil.rmtree(d, ignore_errors=True)


def test_explicit_true_that_is_slower_warns_once_with_the_ratio(cache, capfd):
    _seed_cache({"fp32": 400.0, "fp32+channels_last": 410.0, "bf16": 40.0, "bf16+channels_last": 41.0})
    last = run_trial(_trial(bf16=True, channels_last=False))
    err = capfd.readouterr().err
    warning = ("gce-search: warning: train.bf16: true is 10.00x slower than false on this CPU (probe: bf16 40.0 "
               "img/s, fp32 400.0 img/s); 'auto' chooses for the machine")
    assert err.count(warning) == 1, err
    assert last["train/bf16"] is True and last["device/info"]["decided_by"] == "config"
    assert last["device/info"]["warnings"] == [warning.removeprefix("gce-search: warning: ")]
    # auto, on the same node: the faster float32
    assert run_trial(_trial())["train/bf16"] is False
    assert "warning" not in capfd.readouterr().err


def test_a_resumed_trial_keeps_its_precision_when_the_probe_would_now_decide_otherwise(cache):
    _seed_cache({"fp32": 100.0, "fp32+channels_last": 100.0, "bf16": 400.0, "bf16+channels_last": 100.0})
    reporter, full, full_dirs = _collect()
    run_trial(_trial(epochs=3), reporter)
    assert [m["train/bf16"] for m in full] == [True] * 3

    class Stop(Exception):
        pass

    first: list = []
    first_dirs: list = []

    def stop_after_one(metrics, checkpoint_dir):
        first.append(metrics)
        first_dirs.append(checkpoint_dir)
        raise Stop

    with pytest.raises(Stop):
        run_trial(_trial(epochs=3), stop_after_one)
    _seed_cache({"fp32": 400.0, "fp32+channels_last": 100.0, "bf16": 100.0, "bf16+channels_last": 100.0})
    assert run_trial(_trial(epochs=1))["train/bf16"] is False  # what a fresh trial would now choose
    reporter2, second, second_dirs = _collect()
    last = run_trial(_trial(epochs=3), reporter2, restore_from=first_dirs[0])
    assert last["device/info"]["decided_by"] == "checkpoint"
    assert [_without_run_description(m) for m in first + second] == [_without_run_description(m) for m in full]
    import shutil

    for d in full_dirs + first_dirs + second_dirs:
        if d:
            shutil.rmtree(d, ignore_errors=True)


def test_pin_precision_replaces_auto_with_what_the_trial_used():
    cfg = resolve({"train": {"channels_last": False}})
    pin_precision(cfg, {"train/bf16": True, "train/channels_last": False})
    assert cfg["train"]["bf16"] is True and cfg["train"]["channels_last"] is False
    untouched = resolve({})
    pin_precision(untouched, {})  # a result from before the values were recorded: left as it was
    assert untouched["train"]["bf16"] == "auto"


def test_the_cache_directory_is_documented_and_overridable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "gce-search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == __import__("pathlib").Path(os.path.expanduser("~")) / ".cache" / "gce-search"
