"""The Optuna journal of an experiment and the searcher's saved state, as data.

The study lives in `EXP/optuna.journal` (an Optuna JournalStorage: an append-only file that survives the driver).
Ray saves the searcher's own state every experiment checkpoint as `searcher-state-<session>.pkl`: plain JSON
despite the name, format SEARCHER_FORMAT, holding identifiers only (no path, no study):

    {"format": 2, "study_name": ..., "trials": {ray trial id: Optuna storage trial id},
     "completed": [ray trial id, ...], "outcomes": {ray trial id: outcome word}}

Both the searcher (search.searcher) and the recovery before a resume (search.state) read and write it here; the
state can always be rebuilt from the journal, in which every trial asked for Ray carries its Ray id.
"""
from __future__ import annotations

import json
import os

import optuna
from optuna.storages.journal import JournalFileBackend

SEARCHER_FORMAT = 2


def open_journal(path: str) -> optuna.storages.JournalStorage:
    """An Optuna JournalStorage on a local file (created if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(os.path.abspath(path)))


def searcher_state_problem(data: bytes) -> str | None:
    state, problem = parse_searcher_state(data)
    return problem


def parse_searcher_state(data: bytes) -> tuple[dict | None, str | None]:
    if not data:
        return None, "empty"
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not the JSON searcher state of this version (cut short, or written by an older version)"
    if not isinstance(state, dict) or state.get("format") != SEARCHER_FORMAT:
        return None, f"not a searcher state of format {SEARCHER_FORMAT}"
    for key, kind in (("trials", dict), ("completed", list), ("outcomes", dict)):
        if not isinstance(state.get(key), kind):
            return None, f"its {key!r} is missing or not a {kind.__name__}"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in state["trials"].values()):
        return None, "its 'trials' do not map Ray trial ids to Optuna trial ids"
    return state, None


def rebuild_searcher_state(journal_path: str, study_name: str | None = None) -> dict:
    """The searcher state, from the Optuna journal alone: every trial asked for Ray carries its Ray id.
    `study_name` None: the journal's only study (a renamed experiment keeps its study's first name)."""
    storage = open_journal(journal_path)
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise ValueError(f"the journal holds {len(names)} studies ({names}); expected one")
        study_name = names[0]
    study = optuna.load_study(study_name=study_name, storage=storage)
    study_id = storage.get_study_id_from_name(study_name)
    trials: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        rid = t.user_attrs.get("ray_trial_id")
        if rid is None:
            continue
        if rid not in trials:  # the asked trial; a retry of an errored one is added later
            trials[rid] = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if t.state.is_finished():
            outcomes[rid] = t.user_attrs.get("outcome", t.state.name.lower())
    return {"format": SEARCHER_FORMAT, "study_name": study_name, "trials": trials,
            "completed": sorted(outcomes), "outcomes": outcomes}
