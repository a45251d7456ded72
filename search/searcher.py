"""Ray Tune's OptunaSearch, telling Optuna what actually happened to each trial.

Ray's OptunaSearch tells every trial ASHA stopped as COMPLETE with its partial values, and a NaN-diverged trial as
COMPLETE too (measured on ray 2.60 / optuna 5.0, see docs/design.md "Ray and Optuna facts"): the study's Pareto front
then mixes 1-epoch results with full-budget ones, and a diverged trial can sit on it with ECE 0. This subclass tells

- COMPLETE with (val/acc, val/ece) of the last epoch, only when that result says ``final: true`` (full budget);
- FAIL when the trial errored, reported ``status: diverged``, or its objective values are missing or not finite;
- PRUNED otherwise (stopped early by the scheduler, or stopped before its first result).

Each Optuna trial carries the Ray trial id (user attribute ``ray_trial_id``) and why it ended (``outcome``,
``last_epoch``, and the last values it reported), so the two records can be joined.

Resume: the study lives in a JournalStorage file that survives the driver, while Ray saves this searcher's state only
every experiment checkpoint. After a kill between the two, the journal may be ahead of the saved state: a trial told
in the journal is not told again, and an Optuna trial asked after the last checkpoint (unknown to Ray after restore)
is handed to the next trial Ray asks for, so no sampled configuration is lost and no Optuna trial stays RUNNING.
The saved state is plain JSON without paths, and the pickled searcher in Ray's tuner.pkl carries no study: `resume`
attaches the journal of the directory it resumes (`attach_journal`), so an experiment can be moved or copied.
"""
from __future__ import annotations

import logging
import math
import json
import os
import warnings
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

OBJECTIVES = ["val/acc", "val/ece"]
DIRECTIONS = ["max", "min"]


def open_journal(path: str) -> optuna.storages.JournalStorage:
    """An Optuna JournalStorage on a local file (created if missing)."""
    from optuna.storages.journal import JournalFileBackend

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(os.path.abspath(path)))


def classify(result: dict | None, error: bool, metrics: list[str] = OBJECTIVES) -> tuple[TrialState, list | None, str]:
    """(Optuna state, values to tell, outcome word) for a trial whose last Ray result is `result`."""
    if error:
        return TrialState.FAIL, None, "error"
    if not result:
        return TrialState.PRUNED, None, "stopped"
    if result.get("status") == "diverged":
        return TrialState.FAIL, None, "diverged"
    values = [result.get(m) for m in metrics]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values):
        # A trial that reports no usable objective never reached Optuna as a result in Ray's own code either;
        # without a diverged flag it is still not something the sampler should learn from.
        return TrialState.FAIL, None, "no-objective"
    if result.get("final") is True:
        return TrialState.COMPLETE, [float(v) for v in values], "complete"
    return TrialState.PRUNED, None, "stopped"


def _config_attrs(config: dict | None) -> dict:
    """What optuna-dashboard shows of an asked trial beyond its sampled parameters (search.dashboard)."""
    from gce_search.search.dashboard import config_user_attrs

    return config_user_attrs((config or {}).get("trial_config"))


def _result_attrs(result: dict | None, error: bool) -> dict:
    """What optuna-dashboard shows of a told trial: status, temperatures, training loss (search.dashboard)."""
    from gce_search.search.dashboard import result_user_attrs

    return result_user_attrs(result, errored=error)


class CalibratedOptunaSearch(OptunaSearch):
    """OptunaSearch on a persistent journal study, multi-objective (val/acc max, val/ece min) by default."""

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict | None],
        journal_path: str,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str = "gce-search",
        metric: list[str] | None = None,
        mode: list[str] | None = None,
    ):
        self._journal_path = os.path.abspath(journal_path)
        self._orphans: list[int] = []
        self._outcomes: dict[str, str] = {}
        self._max_concurrent: int | None = None
        super().__init__(
            space=space,
            metric=list(metric or OBJECTIVES),
            mode=list(mode or DIRECTIONS),
            sampler=sampler,
            study_name=study_name,
            storage=open_journal(self._journal_path),
        )
        if self._ot_study.metric_names is None:
            # optuna-dashboard labels the axes with these; the method is stable in use but still flagged experimental.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self.metric))

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    @property
    def outcomes(self) -> dict[str, str]:
        """Ray trial id -> outcome word told in this driver (complete, stopped, diverged, error, no-objective)."""
        return dict(self._outcomes)

    # -- asking ---------------------------------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Taking the limit here makes Ray's ConcurrencyLimiter pass every call through. Its own bookkeeping drops
        # the completion of a trial it no longer counts as live, which is what an errored trial re-run by
        # `resume` (resume_errored) is: its ending would never reach Optuna.
        self._max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if (self._max_concurrent and trial_id not in self._ot_trials
                and len(self.unfinished()) >= self._max_concurrent):
            return None
        if trial_id not in self._ot_trials and self._orphans:
            # Re-use an Optuna trial asked before an interruption but unknown to Ray's restored record: the define-
            # by-run function re-suggests the same names, and Optuna returns the values already stored.
            storage_id = self._orphans.pop(0)
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, storage_id)
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            for key, value in _config_attrs(config).items():
                self._ot_trials[trial_id].set_user_attr(key, value)
        return config

    # -- telling --------------------------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna has no intermediate values for multi-objective studies (Trial.report raises); the scheduler, not
        # Optuna's pruner, decides early stopping here.
        if not isinstance(self.metric, list):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            logger.warning("trial %s finished but was never asked from Optuna; not told", trial_id)
            return
        self._completed_trials.add(trial_id)
        storage = self._ot_study._storage
        current = storage.get_trial(ot_trial._trial_id)
        state, values, outcome = classify(result, error, list(self.metric))
        attrs = _result_attrs(result, error)
        if state is TrialState.COMPLETE and attrs.get("status") == "degenerate":
            # At chance level it is on no front of the tool's, so not on the study's either; a pruned trial sits
            # on the bad side of TPE's split, which is what a collapsed model is (docs/results-format.md).
            state, values, outcome = TrialState.PRUNED, None, "degenerate"
        if current.state.is_finished():
            if current.user_attrs.get("outcome") == "error" and outcome != "error":
                self._record_retry(trial_id, current, state, values, outcome, result)
                return
            # Told before an interruption that came before Ray saved this searcher: telling again would raise.
            self._outcomes[trial_id] = current.user_attrs.get("outcome", current.state.name.lower())
            return
        if result:
            if "epoch" in result:
                ot_trial.set_user_attr("last_epoch", result["epoch"])
            for key in (*self.metric, "score"):
                value = result.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    ot_trial.set_user_attr(f"last {key}", float(value))
        ot_trial.set_user_attr("outcome", outcome)
        for key, value in attrs.items():
            ot_trial.set_user_attr(key, value)
        self._ot_study.tell(ot_trial, values, state=state)
        self._outcomes[trial_id] = outcome

    def _record_retry(self, trial_id, failed, state, values, outcome, result) -> None:
        """An errored trial that `gce-search resume` ran again (resume_errored) and that now ended otherwise: Optuna
        cannot re-tell a finished trial, so the retry becomes a new trial with the same parameters, linked to the
        failed attempt by `retry_of` (its Optuna number) and now carrying the Ray trial id."""
        from gce_search.search.dashboard import CONFIG_ATTR_KEYS

        config_attrs = {k: v for k, v in failed.user_attrs.items() if k in CONFIG_ATTR_KEYS}  # same parameters
        attrs = {**config_attrs, **_result_attrs(result, False), "ray_trial_id": trial_id, "outcome": outcome,
                 "retry_of": failed.number}
        if result and "epoch" in result:
            attrs["last_epoch"] = result["epoch"]
        retry = optuna.trial.create_trial(
            state=state, values=values, params=failed.params, distributions=failed.distributions, user_attrs=attrs)
        self._ot_study.add_trial(retry)
        self._outcomes[trial_id] = outcome

    # -- resume ---------------------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        # Ray pickles this searcher into tuner.pkl when the search starts. The study, its storage and the journal's
        # path stay out: the journal is the one in the directory being resumed (attach_journal), so a moved or
        # copied experiment never reads or writes the original's.
        state = dict(self.__dict__)
        for key in ("_ot_study", "_storage"):
            state[key] = None
        state["_ot_trials"] = {}
        state["_journal_path"] = None
        return state

    def attach_journal(self, journal_path: str) -> None:
        """Use the Optuna journal at `journal_path` (the resumed experiment's own) from now on."""
        self._journal_path = os.path.abspath(journal_path)
        self._storage = open_journal(self._journal_path)
        self._ot_study = optuna.load_study(
            study_name=self._study_name, storage=self._storage, sampler=self._sampler,
            pruner=optuna.pruners.NopPruner())
        self._ot_trials = {}

    def save(self, checkpoint_path: str) -> None:
        # Plain JSON (Ray names the file .pkl): only identifiers, the study itself is already on disk in the
        # journal. No path: the journal is found from the experiment directory (attach_journal).
        from gce_search.search.state import SEARCHER_FORMAT

        state = {
            "format": SEARCHER_FORMAT,
            "study_name": self._study_name,
            "trials": {rid: t._trial_id for rid, t in self._ot_trials.items()},
            "completed": sorted(self._completed_trials),
            "outcomes": dict(self._outcomes),
        }
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        from gce_search.search.state import parse_searcher_state

        with open(checkpoint_path, "rb") as f:
            state, problem = parse_searcher_state(f.read())
        if problem is not None:
            raise ValueError(f"{checkpoint_path}: not a CalibratedOptunaSearch state ({problem}); `gce-search resume` "
                             f"rebuilds it from the Optuna journal")
        if self._journal_path is None:
            raise RuntimeError("restore: no journal attached (call attach_journal with the experiment's own "
                               "optuna.journal first)")
        if self._sampler is not None and hasattr(self._sampler, "reseed_rng"):
            # The sampler comes back from Ray's tuner.pkl as it was before the first trial: with its seed intact it
            # would propose the first trials' random start-up points again.
            self._sampler.reseed_rng()
        self.attach_journal(self._journal_path)
        known = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False)}
        self._ot_trials = {rid: optuna.Trial(self._ot_study, sid) for rid, sid in state["trials"].items()
                           if sid in known}  # a trial whose creation was torn off the journal is re-found later
        self._completed_trials = set(state["completed"]) & set(self._ot_trials)
        self._outcomes = {rid: o for rid, o in state["outcomes"].items() if rid in self._ot_trials}
        # Errored trials run again under resume_errored=True: let their next ending be told (as a retry).
        self._completed_trials -= {rid for rid, outcome in self._outcomes.items() if outcome == "error"}
        self.reconcile()

    def reconcile(self) -> None:
        """Match the journal with the restored Ray-side state (see the module docstring)."""
        storage = self._ot_study._storage
        for rid, trial in self._ot_trials.items():
            # Told in the journal after Ray's last save of this state (e.g. the trials a time budget cut off, told
            # when the search ended): Ray will not end them again, so they are not unfinished. Errored ones are
            # left to their re-run (resume_errored).
            told = storage.get_trial(trial._trial_id)
            if rid not in self._completed_trials and told.state.is_finished() \
                    and told.user_attrs.get("outcome") != "error":
                self._completed_trials.add(rid)
                self._outcomes[rid] = told.user_attrs.get("outcome", told.state.name.lower())
        known = {t._trial_id for t in self._ot_trials.values()}
        self._orphans = [
            ft._trial_id for ft in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if ft._trial_id not in known
        ]
        if self._orphans:
            logger.info("%d Optuna trial(s) asked before the interruption will be run now", len(self._orphans))

    def align_with_ray(self, ray_trials) -> list[str]:
        """Match this searcher with the trials Ray restored (`ray_trials`: objects with trial_id, status and
        last_result), before Ray asks for anything. Ray's experiment state and this searcher's state are written
        one after the other and copied separately, and the journal runs ahead of both, so after a kill (or a state
        put back from its backup) they can disagree:

        - a trial Ray knows but this state does not: found in the journal by its Ray id;
        - a trial this state knows but Ray does not (asked after Ray's last save): its Optuna trial, if still
          running, goes to the next trial Ray asks for;
        - a trial Ray ended (TERMINATED) that Optuna still has running (its ending was told after the journal's
          last complete record, e.g. a torn tail that was set aside): told now from Ray's last result.

        Returns one line per change."""
        lines: list[str] = []
        storage = self._ot_study._storage
        by_ray_id: dict[str, int] = {}
        for t in self._ot_study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("ray_trial_id")
            if rid is not None:
                by_ray_id.setdefault(rid, t._trial_id)
        ray_ids = {t.trial_id for t in ray_trials}
        for rid in sorted(set(self._ot_trials) - ray_ids):
            trial = self._ot_trials.pop(rid)
            self._completed_trials.discard(rid)
            self._outcomes.pop(rid, None)
            if not storage.get_trial(trial._trial_id).state.is_finished():
                self._orphans.append(trial._trial_id)
                lines.append(f"Optuna trial {trial.number} (asked for {rid}, which Ray's saved state does not "
                             f"list) goes to the next new trial")
        for t in ray_trials:
            rid = t.trial_id
            if rid not in self._ot_trials and rid in by_ray_id:
                self._ot_trials[rid] = optuna.Trial(self._ot_study, by_ray_id[rid])
                self._orphans = [sid for sid in self._orphans if sid != by_ray_id[rid]]
            if rid not in self._ot_trials:
                continue
            told = storage.get_trial(self._ot_trials[rid]._trial_id)
            if t.status == "TERMINATED" and not told.state.is_finished():
                self._completed_trials.discard(rid)
                self.on_trial_complete(rid, result=t.last_result or None)
                lines.append(f"trial {rid}: told Optuna again from Ray's record ({self._outcomes.get(rid)})")
            elif told.state.is_finished() and told.user_attrs.get("outcome") != "error":
                self._completed_trials.add(rid)
                self._outcomes.setdefault(rid, told.user_attrs.get("outcome", told.state.name.lower()))
        return lines

    def unfinished(self) -> list[str]:
        """Ray trial ids asked but never told: after fit() returns, trials cut off by Ctrl+C or a time budget."""
        return sorted(set(self._ot_trials) - self._completed_trials)

    def fail_orphans(self) -> int:
        """Tell FAIL for Optuna trials no Ray trial took over (call when the search has ended); returns how many."""
        for storage_id in self._orphans:
            trial = optuna.Trial(self._ot_study, storage_id)
            trial.set_user_attr("outcome", "interrupted")
            self._ot_study.tell(trial, None, state=TrialState.FAIL)
        n, self._orphans = len(self._orphans), []
        return n


def optuna_records(study: optuna.Study) -> dict[str, Any]:
    """Ray trial id -> FrozenTrial, for trials that carry one (what the resume test and results join on); for an
    errored trial re-run by resume, its latest attempt."""
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}
