"""gce-search's Ray Tune searcher: an Optuna study asked and told through Optuna's ask/tell API, telling Optuna
what actually happened to each trial.

`CalibratedSearcher` is a `ray.tune.search.Searcher` of its own (not Ray's OptunaSearch, whose private state a
subclass would have to reach into). Ray's OptunaSearch tells every trial ASHA stopped as COMPLETE with its partial
values, and a NaN-diverged trial as COMPLETE too (measured on ray 2.60 / optuna 5.0, see docs/design.md "Ray and
Optuna facts"): the study's Pareto front then mixes 1-epoch results with full-budget ones, and a diverged trial can
sit on it with ECE 0. This searcher tells, from
the one rule of how a trial ended (search.records.trial_outcome):

- COMPLETE with (val/acc, val/ece) of the last epoch for a complete trial: its last result says ``final: true``
  (full budget), above chance level;
- FAIL for an error before such a result, ``status: diverged``, or objective values missing or not finite;
- PRUNED otherwise (stopped early by the scheduler, or before its first result), and for a full-budget trial at
  chance level (``degenerate``).

Each Optuna trial carries the Ray trial id (user attribute ``ray_trial_id``) and why it ended (``outcome``,
``last_epoch``, and the last values it reported), so the two records can be joined. The trial config Ray receives
is the one Ray's OptunaSearch builds from a define-by-run space: every suggested value under its parameter name,
then the function's returned constants (``trial_config``), keys split on ``/`` into nested dicts.

Resume: the study lives in a JournalStorage file that survives the driver, while Ray saves this searcher's state only
every experiment checkpoint. After a kill between the two, the journal may be ahead of the saved state: a trial told
in the journal is not told again, and an Optuna trial asked after the last checkpoint (unknown to Ray after restore)
is handed to the next trial Ray asks for, so no sampled configuration is lost and no Optuna trial stays RUNNING.
The saved state is plain JSON without paths (search.journal SEARCHER_FORMAT), and the pickled searcher in Ray's
tuner.pkl is an explicit dict of its settings and that JSON state, without the study: `resume` attaches the journal
of the directory it resumes (`attach_journal`), so an experiment can be moved or copied.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import time
import warnings
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from gce_search.search.journal import SEARCHER_FORMAT, open_journal, parse_searcher_state
from gce_search.search.pareto import MODES, OBJECTIVES
from gce_search.search.records import trial_outcome

logger = logging.getLogger(__name__)

# a define-by-run space that takes longer than this is warned about (as Ray's OptunaSearch does)
DEFINE_BY_RUN_WARN_S = 1.0


def classify(result: dict | None, error: bool, metrics: Sequence[str] = OBJECTIVES
             ) -> tuple[TrialState, list | None, str]:
    """(Optuna state, values to tell, outcome word) for a trial whose last Ray result is `result`.

    The outcome is search.records.trial_outcome, the one rule of how a trial ended; Optuna gets COMPLETE (with the
    objective values) for a complete trial only, FAIL for an error, a divergence or a full-budget result without
    finite objectives ("no-objective"), PRUNED for stopped and degenerate trials."""
    outcome = trial_outcome(result, errored=error)
    if outcome in ("error", "diverged"):
        return TrialState.FAIL, None, outcome
    if outcome == "stopped":
        return TrialState.PRUNED, None, outcome
    values = [(result or {}).get(m) for m in metrics]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values):
        # A trial that reports no usable objective never reached Optuna as a result in Ray's own code either;
        # without a diverged flag it is still not something the sampler should learn from.
        return TrialState.FAIL, None, "no-objective"
    if outcome == "degenerate":
        # At chance level it is on no front of the tool's, so not on the study's either; a pruned trial sits on
        # the bad side of TPE's split, which is what a collapsed model is (docs/results-format.md).
        return TrialState.PRUNED, None, outcome
    return TrialState.COMPLETE, [float(v) for v in values], outcome


def _config_attrs(config: dict | None) -> dict:
    """What optuna-dashboard shows of an asked trial beyond its sampled parameters (search.dashboard)."""
    from gce_search.search.attributes import config_user_attrs

    return config_user_attrs((config or {}).get("trial_config"))


def _result_attrs(result: dict | None, error: bool) -> dict:
    """What optuna-dashboard shows of a told trial: status, temperatures, training loss (search.dashboard)."""
    from gce_search.search.attributes import result_user_attrs

    return result_user_attrs(result, errored=error)


class _SuggestCaptor:
    """The Optuna trial as the define-by-run space sees it: each ``suggest_*`` call's value is recorded under its
    parameter name, as Ray's OptunaSearch records it (its _OptunaTrialSuggestCaptor, ray 2.60), so the config has
    the same keys and values."""

    def __init__(self, trial: optuna.Trial):
        self._trial = trial
        self.captured: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        item = getattr(self._trial, name)
        if not (name.startswith("suggest_") and callable(item)):
            return item
        signature = inspect.signature(item)

        @functools.wraps(item)
        def capture(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            if "name" not in bound.arguments:
                raise ValueError("missing required argument: name")
            value = item(*args, **kwargs)
            self.captured[bound.arguments["name"]] = value
            return value

        return capture


def _unflatten(flat: dict, delimiter: str = "/") -> dict:
    """{"a/b": 1} -> {"a": {"b": 1}}: the nesting Ray gives a flat config (keys without the delimiter are kept)."""
    out: dict = {}
    for key, value in flat.items():
        path = key.split(delimiter)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TypeError(f"config key {key!r}: its parent {part!r} is not a mapping; rename one of them")
        node[path[-1]] = value
    return out


def config_from_space(space: Callable[[Any], dict | None], trial: optuna.Trial) -> dict:
    """The trial config of `trial` under a define-by-run `space`: the suggested values by parameter name, then the
    constants `space` returns, nested on ``/`` (the config Ray's OptunaSearch gives the trainable)."""
    captor = _SuggestCaptor(trial)
    started = time.time()
    constants = space(captor)
    if time.time() - started > DEFINE_BY_RUN_WARN_S:
        warnings.warn(f"the define-by-run space took {time.time() - started:.1f} s; it should only suggest "
                      f"parameters (training belongs in the trainable)", stacklevel=2)
    if constants is not None:
        if not isinstance(constants, dict) or not all(isinstance(k, str) for k in constants):
            raise TypeError(f"the define-by-run space returned {type(constants).__name__}; valid: None or a dict "
                            f"with str keys")
    return _unflatten({**captor.captured, **(constants or {})})


class CalibratedSearcher(Searcher):
    """A Ray Tune searcher on a persistent Optuna journal study, multi-objective (val/acc max, val/ece min) by
    default. `space` is a define-by-run function (search.space.define_by_run)."""

    PICKLE_FORMAT = 1

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict | None],
        journal_path: str | None,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str = "gce-search",
        metric: list[str] | str | None = None,
        mode: list[str] | str | None = None,
        storage: optuna.storages.BaseStorage | None = None,
    ):
        """`journal_path`: the Optuna journal the study lives in (what a search uses: it survives the driver).
        `storage` instead: any Optuna storage, e.g. `optuna.storages.InMemoryStorage()` where nothing has to
        survive the process (bench/simulate_search.py); such a searcher cannot be restored."""
        if not callable(space):
            raise TypeError(f"space: {type(space).__name__}; valid: a define-by-run function of an optuna.Trial")
        if (journal_path is None) == (storage is None):
            raise TypeError("CalibratedSearcher: give journal_path (a search's Optuna journal) or storage, not both")
        super().__init__(metric=metric or list(OBJECTIVES), mode=mode or list(MODES))
        self._settings(space, sampler, study_name, None)
        self._load_state({"trials": {}, "completed": [], "outcomes": {}})
        if storage is None:
            self._journal_path = os.path.abspath(journal_path)
            self._storage = open_journal(self._journal_path)
        else:
            self._storage = storage
        directions = ["minimize" if m == "min" else "maximize" for m in self._modes()]
        self._study = optuna.create_study(
            storage=self._storage, sampler=self._sampler or optuna.samplers.TPESampler(),
            pruner=optuna.pruners.NopPruner(), study_name=self._study_name, load_if_exists=True,
            directions=directions)
        self._study_id = self._storage.get_study_id_from_name(self._study_name)
        if self._study.metric_names is None:
            # optuna-dashboard labels the axes with these; the method is stable in use but still flagged experimental.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study.set_metric_names(self._metrics())

    def _settings(self, space, sampler, study_name: str, max_concurrent: int | None) -> None:
        self._space = space
        self._sampler = sampler
        self._study_name = study_name
        self._max_concurrent = max_concurrent
        self._journal_path: str | None = None
        self._storage = None
        self._study: optuna.Study | None = None
        self._study_id: int | None = None
        self._asked: dict[str, optuna.Trial] = {}  # this process's optuna.Trial objects, by Ray trial id
        self._orphans: list[int] = []

    def _load_state(self, state: dict) -> None:
        self._trials: dict[str, int] = dict(state["trials"])  # Ray trial id -> Optuna storage trial id
        self._completed: set[str] = set(state["completed"])
        self._outcomes: dict[str, str] = dict(state["outcomes"])

    def _metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    def _modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def study(self) -> optuna.Study:
        return self._study

    @property
    def outcomes(self) -> dict[str, str]:
        """Ray trial id -> outcome word told in this driver (complete, stopped, degenerate, diverged, error,
        no-objective)."""
        return dict(self._outcomes)

    # -- Optuna records by storage id (Optuna's public storage API, on the journal this searcher opened) -----------

    def _storage_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def _frozen(self, storage_id: int) -> optuna.trial.FrozenTrial:
        return self._storage.get_trial(storage_id)

    def _set_attr(self, storage_id: int, key: str, value: Any) -> None:
        self._storage.set_trial_user_attr(storage_id, key, value)

    def _trial(self, trial_id: str) -> optuna.Trial:
        if trial_id not in self._asked:
            self._asked[trial_id] = optuna.Trial(self._study, self._trials[trial_id])
        return self._asked[trial_id]

    # -- Ray's Searcher interface ---------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        """Refused (False), as Ray's own searchers answer once their space is set: the space is the define-by-run
        function and the objectives are the study's; Tune's metric/mode (``score``, for its own result checks)
        do not replace them. Ray calls this only with a non-empty param_space, and then still merges that
        space's constants into every suggested config."""
        return False

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Taking the limit here makes Ray's ConcurrencyLimiter pass every call through. Its own bookkeeping drops
        # the completion of a trial it no longer counts as live, which is what an errored trial re-run by
        # `resume` (resume_errored) is: its ending would never reach Optuna.
        self._max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._trials:
            if self._max_concurrent and len(self.unfinished()) >= self._max_concurrent:
                return None
            if self._orphans:
                # Re-use an Optuna trial asked before an interruption but unknown to Ray's restored record: the
                # define-by-run function re-suggests the same names, and Optuna returns the values already stored.
                self._trials[trial_id] = self._orphans.pop(0)
            else:
                asked = self._study.ask()
                self._trials[trial_id] = self._storage_id(asked.number)
                self._asked[trial_id] = asked
        trial = self._trial(trial_id)
        config = config_from_space(self._space, trial)
        trial.set_user_attr("ray_trial_id", trial_id)
        for key, value in _config_attrs(config).items():
            trial.set_user_attr(key, value)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna has no intermediate values for multi-objective studies (Trial.report raises); the scheduler, not
        # Optuna's pruner, decides early stopping here. A single objective is reported per training iteration.
        if isinstance(self.metric, str) and trial_id in self._trials and trial_id not in self._completed:
            value = result.get(self.metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._trial(trial_id).report(float(value), int(result.get("training_iteration", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed:
            return
        storage_id = self._trials.get(trial_id)
        if storage_id is None:
            logger.warning("trial %s finished but was never asked from Optuna; not told", trial_id)
            return
        self._completed.add(trial_id)
        current = self._frozen(storage_id)
        metrics = self._metrics()
        state, values, outcome = classify(result, error, metrics)
        attrs = _result_attrs(result, error)
        if current.state.is_finished():
            if current.user_attrs.get("outcome") == "error" and outcome != "error":
                self._record_retry(trial_id, current, state, values, outcome, result)
                return
            # Told before an interruption that came before Ray saved this searcher: telling again would raise.
            self._outcomes[trial_id] = current.user_attrs.get("outcome", current.state.name.lower())
            return
        if result:
            if "epoch" in result:
                self._set_attr(storage_id, "last_epoch", result["epoch"])
            for key in (*metrics, "score"):
                value = result.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._set_attr(storage_id, f"last {key}", float(value))
        self._set_attr(storage_id, "outcome", outcome)
        for key, value in attrs.items():
            self._set_attr(storage_id, key, value)
        self._study.tell(current.number, values, state=state)
        self._asked.pop(trial_id, None)
        self._outcomes[trial_id] = outcome

    def _record_retry(self, trial_id, failed, state, values, outcome, result) -> None:
        """An errored trial that `gce-search resume` ran again (resume_errored) and that now ended otherwise: Optuna
        cannot re-tell a finished trial, so the retry becomes a new trial with the same parameters, linked to the
        failed attempt by `retry_of` (its Optuna number) and now carrying the Ray trial id."""
        from gce_search.search.attributes import CONFIG_ATTR_KEYS

        config_attrs = {k: v for k, v in failed.user_attrs.items() if k in CONFIG_ATTR_KEYS}  # same parameters
        attrs = {**config_attrs, **_result_attrs(result, False), "ray_trial_id": trial_id, "outcome": outcome,
                 "retry_of": failed.number}
        if result and "epoch" in result:
            attrs["last_epoch"] = result["epoch"]
        retry = optuna.trial.create_trial(
            state=state, values=values, params=failed.params, distributions=failed.distributions, user_attrs=attrs)
        self._study.add_trial(retry)
        self._outcomes[trial_id] = outcome

    # -- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The JSON state Ray saves every experiment checkpoint (search.journal SEARCHER_FORMAT): identifiers only,
        the study itself is on disk in the journal, and no path (the journal is found from the experiment
        directory, attach_journal)."""
        return {
            "format": SEARCHER_FORMAT,
            "study_name": self._study_name,
            "trials": dict(self._trials),
            "completed": sorted(self._completed),
            "outcomes": dict(self._outcomes),
        }

    def __getstate__(self) -> dict:
        # Ray pickles this searcher into tuner.pkl when the search starts: its settings and its JSON state. The
        # study, its storage and the journal's path stay out: the journal is the one in the directory being
        # resumed (attach_journal), so a moved or copied experiment never reads or writes the original's.
        return {
            "format": self.PICKLE_FORMAT,
            "space": self._space,
            "sampler": self._sampler,
            "study_name": self._study_name,
            "metric": self.metric,
            "mode": self.mode,
            "max_concurrent": self._max_concurrent,
            "state": self.state_dict(),
        }

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != self.PICKLE_FORMAT:
            raise ValueError(f"not a pickled {type(self).__name__} of format {self.PICKLE_FORMAT}")
        Searcher.__init__(self, metric=state["metric"], mode=state["mode"])
        self._settings(state["space"], state["sampler"], state["study_name"], state["max_concurrent"])
        self._load_state(state["state"])

    def attach_journal(self, journal_path: str) -> None:
        """Use the Optuna journal at `journal_path` (the resumed experiment's own) from now on."""
        self._journal_path = os.path.abspath(journal_path)
        self._storage = open_journal(self._journal_path)
        self._study = optuna.load_study(
            study_name=self._study_name, storage=self._storage, sampler=self._sampler,
            pruner=optuna.pruners.NopPruner())
        self._study_id = self._storage.get_study_id_from_name(self._study_name)
        self._asked = {}

    def save(self, checkpoint_path: str) -> None:
        # Plain JSON (Ray names the file .pkl).
        with open(checkpoint_path, "w") as f:
            json.dump(self.state_dict(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state, problem = parse_searcher_state(f.read())
        if problem is not None:
            raise ValueError(f"{checkpoint_path}: not a {type(self).__name__} state ({problem}); `gce-search resume` "
                             f"rebuilds it from the Optuna journal")
        if getattr(self, "_journal_path", None) is None:
            raise RuntimeError("restore: no journal attached (call attach_journal with the experiment's own "
                               "optuna.journal first)")
        if self._sampler is not None and hasattr(self._sampler, "reseed_rng"):
            # The sampler comes back from Ray's tuner.pkl as it was before the first trial: with its seed intact it
            # would propose the first trials' random start-up points again.
            self._sampler.reseed_rng()
        self.attach_journal(self._journal_path)
        known = {self._storage_id(t.number) for t in self._study.get_trials(deepcopy=False)}
        # a trial whose creation was torn off the journal is re-found later (align_with_ray)
        self._load_state({
            "trials": {rid: sid for rid, sid in state["trials"].items() if sid in known},
            "completed": [], "outcomes": {}})
        self._completed = set(state["completed"]) & set(self._trials)
        self._outcomes = {rid: o for rid, o in state["outcomes"].items() if rid in self._trials}
        # Errored trials run again under resume_errored=True: let their next ending be told (as a retry).
        self._completed -= {rid for rid, outcome in self._outcomes.items() if outcome == "error"}
        self.reconcile()

    def reconcile(self) -> None:
        """Match the journal with the restored Ray-side state (see the module docstring)."""
        for rid, storage_id in self._trials.items():
            # Told in the journal after Ray's last save of this state (e.g. the trials a time budget cut off, told
            # when the search ended): Ray will not end them again, so they are not unfinished. Errored ones are
            # left to their re-run (resume_errored).
            told = self._frozen(storage_id)
            if rid not in self._completed and told.state.is_finished() \
                    and told.user_attrs.get("outcome") != "error":
                self._completed.add(rid)
                self._outcomes[rid] = told.user_attrs.get("outcome", told.state.name.lower())
        known = set(self._trials.values())
        running = [self._storage_id(t.number)
                   for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        self._orphans = [sid for sid in running if sid not in known]
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
        by_ray_id: dict[str, int] = {}
        for t in self._study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("ray_trial_id")
            if rid is not None and rid not in by_ray_id:
                by_ray_id[rid] = self._storage_id(t.number)
        ray_ids = {t.trial_id for t in ray_trials}
        for rid in sorted(set(self._trials) - ray_ids):
            storage_id = self._trials.pop(rid)
            self._asked.pop(rid, None)
            self._completed.discard(rid)
            self._outcomes.pop(rid, None)
            told = self._frozen(storage_id)
            if not told.state.is_finished():
                self._orphans.append(storage_id)
                lines.append(f"Optuna trial {told.number} (asked for {rid}, which Ray's saved state does not "
                             f"list) goes to the next new trial")
        for t in ray_trials:
            rid = t.trial_id
            if rid not in self._trials and rid in by_ray_id:
                self._trials[rid] = by_ray_id[rid]
                self._orphans = [sid for sid in self._orphans if sid != by_ray_id[rid]]
            if rid not in self._trials:
                continue
            told = self._frozen(self._trials[rid])
            if t.status == "TERMINATED" and not told.state.is_finished():
                self._completed.discard(rid)
                self.on_trial_complete(rid, result=t.last_result or None)
                lines.append(f"trial {rid}: told Optuna again from Ray's record ({self._outcomes.get(rid)})")
            elif told.state.is_finished() and told.user_attrs.get("outcome") != "error":
                self._completed.add(rid)
                self._outcomes.setdefault(rid, told.user_attrs.get("outcome", told.state.name.lower()))
        return lines

    def unfinished(self) -> list[str]:
        """Ray trial ids asked but never told: after fit() returns, trials cut off by Ctrl+C or a time budget."""
        return sorted(set(self._trials) - self._completed)

    def fail_orphans(self) -> int:
        """Tell FAIL for Optuna trials no Ray trial took over (call when the search has ended); returns how many."""
        for storage_id in self._orphans:
            self._set_attr(storage_id, "outcome", "interrupted")
            self._study.tell(self._frozen(storage_id).number, None, state=TrialState.FAIL)
        n, self._orphans = len(self._orphans), []
        return n


def optuna_records(study: optuna.Study) -> dict[str, Any]:
    """Ray trial id -> FrozenTrial, for trials that carry one (what the resume test and results join on); for an
    errored trial re-run by resume, its latest attempt."""
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}
