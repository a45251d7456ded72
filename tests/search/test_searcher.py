"""CalibratedSearcher tells Optuna pruned / failed / complete correctly, under a real Ray Tune run with ASHA."""
from __future__ import annotations

import math
import time

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from gce_search.search.searcher import CalibratedSearcher, classify, optuna_records

EPOCHS = 3


def synthetic_space(trial: optuna.Trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def synthetic_trainable(config: dict) -> None:
    """Reports made-up metrics: x < 0.1 diverges at epoch 1, 0.1 <= x < 0.2 raises, others score 1.1 x - 0.1."""
    x = config["x"]
    for epoch in range(1, EPOCHS + 1):
        time.sleep(0.15)  # keeps the two concurrent trials interleaved so that ASHA sees earlier rungs filled
        if x < 0.1:
            nan = float("nan")
            tune.report({"epoch": epoch, "val/acc": nan, "val/ece": nan, "score": nan, "status": "diverged",
                         "final": False})
            return
        if 0.1 <= x < 0.2:
            raise RuntimeError("synthetic failure")
        acc, ece = x, 0.1 * (1 - x)
        tune.report({"epoch": epoch, "val/acc": acc, "val/ece": ece, "score": acc - ece, "status": "ok",
                     "final": epoch == EPOCHS})


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_classify_hand_cases():
    full = {"epoch": 3, "val/acc": 0.9, "val/ece": 0.02, "final": True, "status": "ok"}
    assert classify(full, False) == (TrialState.COMPLETE, [0.9, 0.02], "complete")
    assert classify({**full, "final": False}, False)[0] == TrialState.PRUNED
    assert classify({k: v for k, v in full.items() if k != "final"}, False)[0] == TrialState.PRUNED
    assert classify({**full, "status": "diverged"}, False)[:2] == (TrialState.FAIL, None)
    assert classify({**full, "val/ece": float("nan")}, False)[0] == TrialState.FAIL
    assert classify({**full, "val/acc": None}, False)[0] == TrialState.FAIL
    # Errored: FAIL, unless a full-budget result came first (records.trial_outcome, the one rule: such a trial is
    # complete in the result files, the console and TensorBoard, so it is complete in the study too). Ray itself
    # passes no result with error=True.
    assert classify(None, True) == (TrialState.FAIL, None, "error")
    assert classify({**full, "final": False}, True) == (TrialState.FAIL, None, "error")
    assert classify(full, True) == (TrialState.COMPLETE, [0.9, 0.02], "complete")
    assert classify(None, False)[0] == TrialState.PRUNED
    # At chance level (10 balanced classes, 100 val samples: bound 0.16): pruned, not on the study's front.
    chance = {**full, "val/acc": 0.12, "val/n": 100, "data/info": {"num_classes": 10}}
    assert classify(chance, False) == (TrialState.PRUNED, None, "degenerate")
    assert classify({**chance, "val/acc": 0.17}, False)[0] == TrialState.COMPLETE


def test_real_asha_run_tells_pruned_failed_complete(local_ray, tmp_path):
    journal = tmp_path / "optuna.journal"
    searcher = CalibratedSearcher(synthetic_space, str(journal), sampler=optuna.samplers.RandomSampler(seed=0))
    # Fixed order: strong trials first so that ASHA's rung cut-off is high when the weak ones arrive.
    for x in (0.9, 0.85, 0.05, 0.15, 0.3, 0.35, 0.95, 0.25):
        searcher.study.enqueue_trial({"x": x})
    tuner = tune.Tuner(
        synthetic_trainable,
        tune_config=tune.TuneConfig(
            metric="score", mode="max", search_alg=searcher, num_samples=8, reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=EPOCHS, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="synthetic", verbose=0),
    )
    grid = tuner.fit()
    assert len(grid) == 8

    study = optuna.load_study(study_name="gce-search", storage=searcher.study._storage)
    assert study.metric_names == ["val/acc", "val/ece"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_ray_id = optuna_records(study)
    assert len(by_ray_id) == 8 == len(study.trials)

    seen = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
    for result in grid:
        ot = by_ray_id[result.metrics["trial_id"]]
        x = ot.params["x"]
        seen[ot.state] += 1
        if x < 0.2:  # diverged or raised: never a result for the sampler
            assert ot.state == TrialState.FAIL and ot.values is None
            assert ot.user_attrs["outcome"] == ("diverged" if x < 0.1 else "error")
        elif result.metrics.get("final"):
            assert ot.state == TrialState.COMPLETE
            assert ot.values == pytest.approx([x, 0.1 * (1 - x)])
            assert result.metrics["epoch"] == EPOCHS
        else:  # stopped by ASHA before the full budget
            assert ot.state == TrialState.PRUNED and ot.values is None
            assert ot.user_attrs["last_epoch"] < EPOCHS
            assert ot.user_attrs["last val/acc"] == pytest.approx(x)
    assert seen[TrialState.FAIL] == 2
    assert seen[TrialState.PRUNED] >= 1, "ASHA stopped no trial: the test lost its point"
    assert seen[TrialState.COMPLETE] >= 2
    # The multi-objective front is built from full-budget trials only: the best-accuracy Pareto trial has x = 0.95.
    assert max(t.values[0] for t in study.best_trials) == pytest.approx(0.95)
    assert all(not math.isnan(v) for t in study.best_trials for v in t.values)


def test_save_restore_adopts_trials_asked_after_the_checkpoint(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    first = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=1))
    config_a = first.suggest("trial_a")
    first.on_trial_complete("trial_a", {"epoch": 3, "val/acc": 0.8, "val/ece": 0.05, "final": True})
    config_b = first.suggest("trial_b")
    state_file = str(tmp_path / "searcher.pkl")
    first.save(state_file)  # Ray's experiment checkpoint: knows a (told) and b (running)
    config_c = first.suggest("trial_c")  # asked after the checkpoint; the driver is then killed
    first.on_trial_complete("trial_b", {"epoch": 2, "val/acc": 0.5, "val/ece": 0.1, "final": False})  # told, unsaved

    second = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=1))
    second.restore(state_file)
    # b is resumed by Ray and completes again: the journal already has it, so it is not told twice.
    second.on_trial_complete("trial_b", {"epoch": 3, "val/acc": 0.5, "val/ece": 0.1, "final": True})
    # c was lost from Ray's record; the next trial Ray asks for takes over its sampled configuration.
    config_d = second.suggest("trial_d")
    assert config_d == config_c != config_a
    second.on_trial_complete("trial_d", {"epoch": 3, "val/acc": 0.7, "val/ece": 0.03, "final": True})
    config_e = second.suggest("trial_e")
    # the restored sampler does not replay the seeded start-up points of the first driver
    assert config_e not in (config_a, config_b, config_c)
    assert second.fail_orphans() == 0

    study = second.study
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert len(states) == 4  # a, b, c (taken over by d), e: no duplicate Optuna trial
    records = optuna_records(study)
    assert records["trial_b"].state == TrialState.PRUNED
    assert records["trial_d"].state == TrialState.COMPLETE and records["trial_d"].values == [0.7, 0.03]
    assert records["trial_a"].values == [0.8, 0.05]
    assert "trial_c" not in records  # its Optuna trial now names d


def test_trials_told_after_the_last_save_are_not_unfinished_after_restore(tmp_path):
    # A time budget ends the search: Ray saves this state, then the driver tells the trials it cut off (PRUNED).
    journal = str(tmp_path / "optuna.journal")
    first = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=3))
    first.suggest("cut_a")
    first.suggest("cut_b")
    state_file = str(tmp_path / "searcher.pkl")
    first.save(state_file)
    for trial_id in first.unfinished():
        first.on_trial_complete(trial_id, result=None)
    # a resume finds nothing to run again: nothing is left unfinished (else it would report an interruption)
    second = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=3))
    second.restore(state_file)
    assert second.unfinished() == []
    assert second.outcomes == {"cut_a": "stopped", "cut_b": "stopped"}


def test_errored_trial_rerun_by_resume_is_recorded_as_a_retry(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    first = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=2))
    config = first.suggest("trial_err")
    first.on_trial_complete("trial_err", error=True)
    state_file = str(tmp_path / "searcher.pkl")
    first.save(state_file)

    second = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=2))
    second.restore(state_file)
    second.on_trial_complete("trial_err", {"epoch": 3, "val/acc": 0.6, "val/ece": 0.04, "final": True})
    trials = second.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = optuna_records(second.study)["trial_err"]
    assert retry.values == [0.6, 0.04] and retry.params == {"x": config["x"]}
    assert retry.user_attrs["retry_of"] == trials[0].number


def test_concurrency_limit_held_by_the_searcher(tmp_path):
    searcher = CalibratedSearcher(synthetic_space, str(tmp_path / "j.journal"))
    assert searcher.set_max_concurrency(2) is True  # Ray's ConcurrencyLimiter then passes calls through
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"epoch": 1, "val/acc": 0.5, "val/ece": 0.1, "final": False})
    assert searcher.suggest("c") is not None
    assert searcher.unfinished() == ["b", "c"]


def test_restore_refuses_foreign_state(tmp_path):
    import pickle

    bad = tmp_path / "state.pkl"
    bad.write_bytes(pickle.dumps({"something": "else"}))
    searcher = CalibratedSearcher(synthetic_space, str(tmp_path / "j.journal"))
    with pytest.raises(ValueError, match="not a CalibratedSearcher state"):
        searcher.restore(str(bad))


# --- the searcher is Ray's public Searcher on Optuna's ask/tell API ---------------------------------------------------

def test_is_a_plain_ray_searcher_not_optuna_search(tmp_path):
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    searcher = CalibratedSearcher(synthetic_space, str(tmp_path / "j.journal"))
    assert isinstance(searcher, Searcher) and not isinstance(searcher, OptunaSearch)
    assert searcher.metric == ["val/acc", "val/ece"] and searcher.mode == ["max", "min"]
    # Tune's own metric/mode (the scalar score) do not replace the study's objectives
    assert searcher.set_search_properties("score", "max", {"x": 1}) is False
    assert searcher.metric == ["val/acc", "val/ece"]


def test_pickled_state_is_a_plain_dict_without_study_or_path(tmp_path):
    import json

    import ray.cloudpickle as cloudpickle

    journal = str(tmp_path / "first" / "optuna.journal")
    searcher = CalibratedSearcher(synthetic_space, journal, sampler=optuna.samplers.RandomSampler(seed=4))
    searcher.set_max_concurrency(3)
    config = searcher.suggest("trial_a")
    searcher.on_trial_complete("trial_a", {"epoch": 3, "val/acc": 0.8, "val/ece": 0.05, "final": True})
    searcher.suggest("trial_b")
    state = searcher.__getstate__()
    assert type(state) is dict
    assert set(state) == {"format", "space", "sampler", "study_name", "metric", "mode", "max_concurrent", "state"}
    json.dumps(state["state"])  # the search state is plain JSON
    assert state["state"] == searcher.state_dict()
    assert state["state"]["trials"].keys() == {"trial_a", "trial_b"} and state["state"]["completed"] == ["trial_a"]
    blob = cloudpickle.dumps(searcher)
    assert str(tmp_path).encode() not in blob  # no journal path, no storage, no study
    assert not any(isinstance(v, (optuna.Study, optuna.storages.BaseStorage)) for v in state.values())

    # what Ray's tuner.pkl gives back: settings and state, a journal to attach
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / "optuna.journal").write_bytes((tmp_path / "first" / "optuna.journal").read_bytes())
    restored = cloudpickle.loads(blob)
    assert restored.study is None and restored.unfinished() == ["trial_b"]
    assert restored.metric == ["val/acc", "val/ece"] and restored.mode == ["max", "min"]
    restored.attach_journal(str(copy_dir / "optuna.journal"))
    assert restored.suggest("trial_b") == searcher.suggest("trial_b")  # the same Optuna trial, same values
    assert restored.suggest("trial_c") is not None and restored.suggest("trial_d") is not None
    assert restored.suggest("trial_e") is None  # the concurrency limit came back with the settings
    restored.on_trial_complete("trial_b", {"epoch": 1, "val/acc": 0.5, "val/ece": 0.1, "final": False})
    assert restored.outcomes == {"trial_a": "complete", "trial_b": "stopped"}
    assert optuna_records(restored.study)["trial_a"].params == {"x": config["x"]}
    # the original experiment's journal is untouched by the copy's searcher
    assert optuna_records(searcher.study)["trial_b"].state == TrialState.RUNNING


@pytest.mark.parametrize("space_name", ["quickstart", "cifar10"])
def test_define_by_run_config_has_the_shape_ray_optuna_search_gives(tmp_path, space_name):
    from ray.tune.search.optuna import OptunaSearch

    from gce_search.search.driver import load_and_validate
    from gce_search.search.space import define_by_run

    spec = load_and_validate(space_name, [])
    ours = CalibratedSearcher(define_by_run(spec), str(tmp_path / "j.journal"),
                              sampler=optuna.samplers.RandomSampler(seed=7))
    rays = OptunaSearch(space=define_by_run(spec), metric=["val/acc", "val/ece"], mode=["max", "min"],
                        sampler=optuna.samplers.RandomSampler(seed=7))
    for i in range(6):
        mine, reference = ours.suggest(f"t{i}"), rays.suggest(f"t{i}")
        assert mine == reference
        assert isinstance(mine["trial_config"], dict) and set(mine) - {"trial_config"}  # parameters beside it
        assert set(optuna_records(ours.study)[f"t{i}"].params) == set(mine) - {"trial_config"}


def test_a_searcher_on_an_in_memory_storage(tmp_path):
    with pytest.raises(TypeError, match="journal_path .* or storage"):
        CalibratedSearcher(synthetic_space, None)
    with pytest.raises(TypeError, match="not both"):
        CalibratedSearcher(synthetic_space, str(tmp_path / "j"), storage=optuna.storages.InMemoryStorage())
    searcher = CalibratedSearcher(synthetic_space, None, sampler=optuna.samplers.RandomSampler(seed=0),
                                  storage=optuna.storages.InMemoryStorage())
    config = searcher.suggest("t1")
    x = config["x"]
    searcher.on_trial_complete("t1", {"epoch": EPOCHS, "val/acc": x, "val/ece": 0.01, "final": True,
                                      "status": "ok"})
    (told,) = searcher.study.get_trials()
    assert told.state == TrialState.COMPLETE and told.values == [x, 0.01]
    assert not (tmp_path / "j").exists()
