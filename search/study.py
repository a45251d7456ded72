"""`gce-search study`: a fixed-hyperparameter grid of methods × seeds, with post-hoc calibrators, on the test split.

A study answers "does GCE beat cross-entropy / the focal family on my data, before and after TS and ATS?" with
mean ± std over seeds. Every run goes through the same trial code as a search trial (trainables.trial.run_trial),
as a Ray Tune trial (so GPU nodes can pack several runs with fractional GPUs); the post-hoc calibrators are fitted
on the run's calibration split and scored on its test split, which no step of the study uses for any choice.

Seeds: a run's `seed` (initialisation, batch order, augmentation) varies; the data split (`data.split_seed`) is
fixed, so all methods are compared on the same calibration and test samples and differences can be paired by seed.

Resuming: each finished run is written to `OUT/runs/<method>__seed<seed>.json` (its resolved trial config, its
post-hoc rows, its time) the moment it ends, and the first seed's reliability diagrams are drawn then. Running the
same study into the same `--out` again runs only the runs that have no record there: an interrupted study picks up
where it stopped, and `--set seeds=N` with a larger N adds seeds to a finished one. A record made with another
config is refused, naming the run and the setting that differs; nothing in OUT is changed then.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from gce_search.spaces.overrides import apply_overrides
from gce_search.trainables.config import deep_merge
from gce_search.yamlio import dump_yaml, read_yaml
from gce_search.errors import ConfigError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "spaces" / "studies"
METRICS = ("acc", "ece", "ece20", "adaece", "cece", "nll", "brier")
TOP_KEYS = ("name", "description", "base", "seeds", "methods", "posthoc", "bins", "resources", "diagrams",
            "compare")
PREDICTIONS_FILE = "predictions.npz"
RUNS_DIR = "runs"  # OUT/runs/<method>__seed<seed>.json: one finished run's record (run_key)
INVOCATIONS_FILE = "invocations.json"  # OUT/runs/invocations.json: each `gce-search study` into OUT, its runs, wall


@dataclass
class StudySpec:
    name: str
    description: str
    base: dict  # partial trial config shared by every run
    seeds: list[int]
    methods: dict[str, dict]  # method name -> loss section
    posthoc: dict[str, dict]  # post-hoc name -> calibration section
    resources: dict = field(default_factory=lambda: {"cpus_per_trial": 1, "gpus_per_trial": 0})
    diagrams: list[str] = field(default_factory=list)  # methods whose reliability diagrams are drawn
    compare: list[list[str]] = field(default_factory=list)  # [method_a, method_b] pairs for paired differences

    def run_config(self, method: str, seed: int) -> dict:
        """The resolved trial config of one run (no calibrator inside the trial: the study fits them post hoc)."""
        from gce_search.trainables.config import pin_threads, resolve

        cfg = resolve(deep_merge(self.base, {"loss": self.methods[method], "seed": seed,
                                             "calibration": {"method": "none"}}), source=f"methods.{method}")
        return pin_threads(cfg, self.resources["cpus_per_trial"])

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "base": self.base, "seeds": self.seeds,
                "methods": self.methods, "posthoc": self.posthoc, "resources": self.resources,
                "diagrams": self.diagrams, "compare": self.compare}


def run_key(method: str, seed: int) -> str:
    """The file stem of one run's record in OUT/runs/."""
    return f"{method}__seed{seed}"


def grid_runs(spec: StudySpec) -> list[tuple[str, int]]:
    """Every (method, seed) of the study, seed by seed: an interrupted study has whole seeds first."""
    return [(m, s) for s in spec.seeds for m in spec.methods]


def _normal(value: Any) -> Any:
    """A value as it reads back from JSON (tuples -> lists, keys -> str), for comparing a record with a spec."""
    return json.loads(json.dumps(value))


def _differences(a: Any, b: Any, path: str = "", newer_keys_ok: bool = True) -> list[str]:
    """Dotted paths where a record's value `a` and the spec's value `b` differ, with both values. With
    `newer_keys_ok`, a key only the spec has is a setting newer than the record (the run had its default) and is
    not a difference; without it (post-hoc calibrators: a new one has no rows in the record), it is."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                if not newer_keys_ok:
                    out.append(f"{sub}: absent in the record, {b[key]!r} now")
            elif key not in b:
                out.append(f"{sub}: {a[key]!r} in the record, absent now")
            else:
                out.extend(_differences(a[key], b[key], sub, newer_keys_ok))
        return out
    return [] if a == b else [f"{path or '(value)'}: {a!r} in the record, {b!r} now"]


def _write_json(path: Path, value: Any) -> None:
    """Write atomically: a record is whole or absent, even when the study is killed while writing it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def read_records(spec: StudySpec, out: Path) -> dict[tuple[str, int], dict]:
    """The finished runs recorded in OUT/runs/ that belong to this study's grid, checked against the spec.

    A record whose resolved trial config or post-hoc calibrators differ from what the spec gives that run now is
    refused (UsageError naming the record and the settings that differ): its numbers would be mixed into a table
    they do not belong to. Records of methods or seeds the spec no longer has are left alone and not used.
    """
    from gce_search.errors import UsageError

    runs_dir = out / RUNS_DIR
    records: dict[tuple[str, int], dict] = {}
    problems = []
    for method, seed in grid_runs(spec):
        path = runs_dir / f"{run_key(method, seed)}.json"
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            stored = (record["trial_config"], record["posthoc"], record["rows"])
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: not a run record this command wrote ({type(err).__name__}: {err}); valid: "
                            "delete it to run that run again")
            continue
        diffs = _differences(stored[0], _normal(spec.run_config(method, seed)))
        diffs += [f"posthoc.{d}" for d in _differences(stored[1], _normal(spec.posthoc), newer_keys_ok=False)]
        if diffs:
            problems.append(f"{path}: made with another config than {method} seed {seed} has now: "
                            + "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else ""))
            continue
        records[(method, seed)] = record
    if problems:
        raise UsageError("\n".join(problems + [
            f"--out {out}: holds runs of another study config; valid: the same study and settings (more seeds "
            "may be added with --set seeds=N), or a new --out directory"]))
    return records


def resolve_study_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError([f"{name_or_path}: no such study file"], "study")
        return path
    shipped = STUDIES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    raise ConfigError([f"{name_or_path}: not a file and not a shipped study; valid: a YAML path or one of "
                       f"{', '.join(names)}"], "study")


def load_study(name_or_path: str, overrides: list[str] = ()) -> StudySpec:
    """Parse and validate a study file; ConfigError lists every problem (nothing runs before this passes)."""
    from gce_search.trainables.catalog import CALIBRATORS
    from gce_search.trainables.config import check_breakpoints, resolve

    path = resolve_study_path(name_or_path)
    source = str(path)
    raw = read_yaml(path)  # the space files' loader: duplicate keys refused, `1e-3` a float; ConfigError
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with base, methods, posthoc, seeds"], source)
    raw, problems = apply_overrides(raw, overrides)
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key; valid: {', '.join(TOP_KEYS)}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        problems.append("base: expected a mapping (a partial trial config)")
        base = {}
    seeds = raw.get("seeds", 5)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        problems.append(f"seeds: got {seeds!r}; valid: a count >= 1 or a list of integers >= 0")
        seeds = [0]
    methods = raw.get("methods")
    if not isinstance(methods, dict) or not methods:
        problems.append("methods: expected a mapping of method name -> loss section, e.g. ce: {name: cross_entropy}")
        methods = {}
    posthoc = raw.get("posthoc", {"none": {"method": "none"}})
    if not isinstance(posthoc, dict) or not posthoc:
        problems.append("posthoc: expected a mapping of name -> calibration section, e.g. ts: {method: ts}")
        posthoc = {}
    spec = StudySpec(
        name=str(raw.get("name") or path.stem), description=str(raw.get("description") or ""),
        base=base, seeds=seeds, methods=methods, posthoc=posthoc,
        resources={"cpus_per_trial": 1, "gpus_per_trial": 0, **(raw.get("resources") or {})},
        diagrams=list(raw.get("diagrams") or []), compare=[list(p) for p in raw.get("compare") or []])
    for method, loss in methods.items():
        if not isinstance(loss, dict):
            problems.append(f"methods.{method}: expected a loss section like {{name: gce, lam: 1.0}}")
            continue
        try:
            spec.run_config(method, seeds[0])
        except ConfigError as err:
            problems.extend(f"methods.{method}: {p}" if p.startswith("loss") else p for p in err.problems)
    for name, section in posthoc.items():
        if not isinstance(section, dict) or section.get("method") not in CALIBRATORS:
            problems.append(f"posthoc.{name}: expected {{method: ...}} with method one of "
                            f"{', '.join(CALIBRATORS.names())}")
            continue
        for key in section:
            if key not in ("method", "breakpoints", "min_samples", "prior_samples"):
                problems.append(f"posthoc.{name}.{key}: unknown key; valid: method, breakpoints, min_samples, "
                                "prior_samples")
        if "breakpoints" in section:
            bad = check_breakpoints(section["breakpoints"])
            if bad:
                problems.append(f"posthoc.{name}.breakpoints: {bad}; valid: strictly increasing inside (0, 1)")
    for method in spec.diagrams:
        if method not in methods:
            problems.append(f"diagrams: {method!r} is not a method of this study; valid: {', '.join(methods)}")
    for pair in spec.compare:
        if len(pair) != 2 or any(m not in methods for m in pair):
            problems.append(f"compare: {pair!r}; valid: pairs of this study's methods ({', '.join(methods)})")
    res = spec.resources
    for key in res:
        if key not in ("cpus_per_trial", "gpus_per_trial"):
            problems.append(f"resources.{key}: unknown key; valid: cpus_per_trial, gpus_per_trial")
    if not (isinstance(res.get("cpus_per_trial"), (int, float)) and res["cpus_per_trial"] > 0):
        problems.append(f"resources.cpus_per_trial: got {res.get('cpus_per_trial')!r}; valid: a number > 0")
    if not (isinstance(res.get("gpus_per_trial"), (int, float)) and res["gpus_per_trial"] >= 0):
        problems.append(f"resources.gpus_per_trial: got {res.get('gpus_per_trial')!r}; valid: a number >= 0")
    if problems:
        raise ConfigError(problems, source)
    try:
        resolve(deep_merge(base, {"calibration": {"method": "none"}}))
    except ConfigError as err:
        raise ConfigError([f"base: {p}" for p in err.problems], source) from None
    return spec


# ---------------------------------------------------------------------------------------------- one run (a trial)


def posthoc_rows(logits: dict, posthoc: dict[str, dict], num_classes: int) -> tuple[list[dict], dict]:
    """Fit each post-hoc calibrator on calib, score it on test: one row per calibrator, and the test
    probabilities per calibrator (for reliability diagrams)."""
    import torch

    from gce_search.trainables.calibration import build_calibrator
    from gce_search.trainables.metrics import ece, summary

    calib_logits, calib_labels = logits["calib"]
    test_logits, test_labels = logits["test"]
    rows, probs = [], {}
    for name, section in posthoc.items():
        cal = build_calibrator(section)
        cal.fit(calib_logits, calib_labels)
        z = cal.transform(test_logits)
        s = summary(z, test_labels, n_bins=15, num_classes=num_classes)
        p = torch.softmax(z.double(), dim=-1)
        state = cal.state_dict()  # a refined calibrator's is its winner's: the method and breakpoints it chose
        rows.append({"posthoc": name, "acc": s["acc"], "ece": s["ece"], "ece20": ece(p, test_labels, n_bins=20),
                     "adaece": s["adaece"], "cece": s["cece"], "nll": s["nll"], "brier": s["brier"],
                     "n": int(test_labels.shape[0]), "temperatures": [float(t) for t in cal.temperatures],
                     "calibrator": state.get("method", section.get("method")),
                     "breakpoints": [float(b) for b in state.get("breakpoints") or []]})
        probs[name] = p.float().numpy()
    return rows, probs


def study_trainable(config: dict) -> None:
    """Ray Tune function trainable: one (method, seed) run, then every post-hoc calibrator on its test split."""
    import numpy as np
    import ray.tune

    from gce_search.trainables.inference import split_logits
    from gce_search.trainables.trial import load_checkpoint, run_trial

    final_state: dict[str, Any] = {}

    def keep_final(metrics: dict, checkpoint_dir: str | None) -> None:
        # The reporter owns each checkpoint folder: read the last epoch's state, delete every folder.
        import shutil

        if checkpoint_dir is not None:
            if metrics.get("final"):
                final_state["state"] = load_checkpoint(checkpoint_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    from gce_search.search.step_board import tune_sink
    from gce_search.trainables.step_progress import reporting_to

    t0 = time.perf_counter()
    with reporting_to(tune_sink()):  # progress from inside a long epoch, to the study's console
        metrics = run_trial(config["trial_config"], reporter=keep_final)
    train_s = time.perf_counter() - t0
    base = {"method": config["method"], "seed": config["seed"], "train_s": train_s,
            "status": metrics.get("status", "ok"), "images_per_s": metrics.get("train/images_per_s", math.nan)}
    if metrics.get("status") == "diverged" or "state" not in final_state:
        ray.tune.report({**base, "rows": "[]"})
        return
    logits = split_logits(final_state["state"], ("calib", "test"))
    num_classes = int(logits["test"][0].shape[1])
    rows, probs = posthoc_rows(logits, config["posthoc"], num_classes)
    out = tempfile.mkdtemp(prefix="gce-study-")
    np.savez_compressed(os.path.join(out, PREDICTIONS_FILE), labels=logits["test"][1].numpy(),
                        **{f"probs_{k}": v for k, v in probs.items()})
    ray.tune.report({**base, "rows": json.dumps(rows)}, checkpoint=ray.tune.Checkpoint.from_directory(out))
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # Ray has persisted it to the study's storage


# ---------------------------------------------------------------------------------------------------- aggregation


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample std (n − 1) and count of the finite values; the std of a single value is undefined (NaN), not 0."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std (sample std, n−1) over seeds for every (method, posthoc) and metric."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["posthoc"]), []).append(r)
    table = []
    for (method, posthoc), rs in groups.items():
        entry = {"method": method, "posthoc": posthoc, "seeds": len(rs)}
        for m in METRICS:
            entry[m], entry[f"{m}_std"], _ = mean_std([r[m] for r in rs])
        table.append(entry)
    return table


def paired_difference(rows: list[dict], a: str, b: str, posthoc: str, metric: str) -> dict:
    """Mean ± std of (a − b) over the seeds both ran, with a two-sided paired t-test (same splits, same seed)."""
    from scipy import stats

    by_seed_a = {r["seed"]: r[metric] for r in rows if r["method"] == a and r["posthoc"] == posthoc}
    by_seed_b = {r["seed"]: r[metric] for r in rows if r["method"] == b and r["posthoc"] == posthoc}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    diffs = [by_seed_a[s] - by_seed_b[s] for s in seeds]
    mean, std, n = mean_std(diffs)
    # With identical differences on every seed (std 0) or one seed, the t statistic is undefined: no p-value.
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if n >= 2 and std > 0 else math.nan
    return {"a": a, "b": b, "posthoc": posthoc, "metric": metric, "mean": mean, "std": std, "n": n, "p": p}


def _fmt(mean: float, std: float, scale: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "—"
    if not math.isfinite(std):  # one seed: no spread to show
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_tables(spec: StudySpec, table: list[dict], rows: list[dict], statuses: dict[str, int]) -> str:
    """The report's tables: one per post-hoc calibrator, accuracy/ECE in %, NLL and Brier as is."""
    n_test = rows[0]["n"] if rows else 0
    spread = f"mean ± std over {len(spec.seeds)} seeds" if len(spec.seeds) > 1 else "one seed, so no std"
    lines = [f"### {spec.name}", "", spec.description.strip(), "",
             f"Test split n = {n_test}; {spread} "
             f"(runs: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}). "
             "Accuracy, ECE (15 and 20 equal-width bins), AdaECE and classwise ECE in %.", ""]
    cols = [("acc", 100, 2), ("ece", 100, 2), ("ece20", 100, 2), ("adaece", 100, 2), ("cece", 100, 3),
            ("nll", 1, 4), ("brier", 1, 4)]
    for posthoc in spec.posthoc:
        lines += [f"**{posthoc}**", "", "| method | acc | ECE-15 | ECE-20 | AdaECE | cw-ECE | NLL | Brier |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in spec.methods:
            entry = next((t for t in table if t["method"] == method and t["posthoc"] == posthoc), None)
            if entry is None:
                lines.append(f"| {method} | " + " | ".join("—" for _ in cols) + " |")
                continue
            cells = [_fmt(entry[m], entry[f"{m}_std"], s, d) for m, s, d in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if spec.compare:
        lines += ["Paired differences (a − b, same seeds and splits; p from a two-sided paired t-test; "
                  "'noise' when p ≥ 0.05; 'p n/a' when the difference is the same on every seed or n < 2):", "", "| a − b | post-hoc | Δacc % | ΔECE-15 % | ΔNLL |", "|---|---|---|---|---|"]
        for a, b in spec.compare:
            for posthoc in spec.posthoc:
                cells = []
                for metric, scale, digits in (("acc", 100, 2), ("ece", 100, 2), ("nll", 1, 4)):
                    d = paired_difference(rows, a, b, posthoc, metric)
                    if not math.isfinite(d["p"]):
                        tag = "p n/a"
                    else:
                        tag = "noise" if d["p"] >= 0.05 else f"p={d['p']:.3f}"
                    cells.append(f"{_fmt(d['mean'], d['std'], scale, digits)} ({tag})")
                lines.append(f"| {a} − {b} | {posthoc} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def draw_diagrams(spec: StudySpec, method: str, pred: dict, out: Path) -> list[Path]:
    """Reliability diagrams (raw vs each post-hoc calibrator) of one run's test predictions: the diagram
    methods' first seed, drawn when that run finishes."""
    from gce_search.trainables.metrics import reliability_diagram

    paths = []
    for posthoc in spec.posthoc:
        if posthoc == "none" or f"probs_{posthoc}" not in pred or "probs_none" not in pred:
            continue
        path = out / f"reliability_{method}_{posthoc}.png"
        reliability_diagram(pred["probs_none"], pred["labels"], n_bins=15,
                            calibrated_probs=pred[f"probs_{posthoc}"], names=("no calibration", posthoc),
                            title=f"{spec.name}: {method}, test", path=str(path))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------- the command


# Seconds between two polls of the progress board, and between two progress lines of one run.
_BOARD_POLL_S = 2.0
_STEP_LINE_S = 60.0


def _recording_callback(spec: StudySpec, out: Path, total: int, done_before: int):
    """On the driver, as each run ends: its record into OUT/runs/ (so an interrupted study resumes from there), the
    diagrams of a first-seed diagram run, and one progress line (method, seed, time, test accuracy/ECE). While a run
    is in an epoch longer than about 20 s (trainables.step_progress), a line with its epoch, step, images/s and the
    epoch's time left, at most once a minute per run."""
    import numpy as np
    from ray import tune

    from gce_search.search.progress import step_words
    from gce_search.search.step_board import BoardReader
    from gce_search.trainables.step_progress import threshold_s

    runs_dir = out / RUNS_DIR

    class StudyRecorder(tune.Callback):
        done = done_before

        def __init__(self):
            self.board = BoardReader(spec.name)
            self.polled = 0.0
            self.line_at: dict[str, float] = {}  # trial id -> when its last progress line was printed
            self.ended: set[str] = set()

        def on_step_begin(self, iteration, trials, **info):
            now = time.time()
            if now - self.polled < min(_BOARD_POLL_S, threshold_s() / 2):
                return
            self.polled = now
            by_id = {t.trial_id: t for t in trials}
            for trial_id, step in self.board.take().items():
                trial = by_id.get(trial_id)
                if trial is None or trial_id in self.ended or now - self.line_at.get(trial_id, 0.0) < _STEP_LINE_S:
                    continue  # a report overtaken by the run's end, or too soon after the last line
                self.line_at[trial_id] = now
                run = trial.config.get("run", {})
                print(f"{time.strftime('%H:%M:%S')} [{StudyRecorder.done}/{total} done] {run.get('method')} seed "
                      f"{run.get('seed')}: {step_words(step)}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.ended.add(trial.trial_id)
            run = trial.config.get("run", {})
            method, seed = run.get("method"), run.get("seed")
            rows = json.loads(result.get("rows", "[]"))
            record = {"method": method, "seed": seed, "status": result.get("status", "ok"),
                      "train_s": result.get("train_s"), "images_per_s": result.get("images_per_s"),
                      "trial_config": run.get("trial_config"), "posthoc": run.get("posthoc"), "rows": rows}
            _write_json(runs_dir / f"{run_key(method, seed)}.json", _normal(record))
            StudyRecorder.done += 1
            head = f"[{StudyRecorder.done}/{total}] {method} seed {seed}: {result.get('train_s', math.nan):.0f} s"
            if not rows:
                print(f"{head}, {result.get('status', 'failed')}", flush=True)
                return
            parts = [f"{r['posthoc']} acc {r['acc']:.4f} ece {r['ece']:.4f}" for r in rows]
            print(f"{head}, test " + "; ".join(parts), flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            run = trial.config.get("run", {})
            method, seed = run.get("method"), run.get("seed")
            if method not in spec.diagrams or seed != spec.seeds[0] or trial.checkpoint is None:
                return
            with trial.checkpoint.as_directory() as d:
                with np.load(os.path.join(d, PREDICTIONS_FILE)) as f:
                    pred = {k: f[k] for k in f.files}
            np.savez_compressed(runs_dir / f"{run_key(method, seed)}.npz", **pred)
            for path in draw_diagrams(spec, method, pred, out):
                print(f"reliability diagram: {path}", flush=True)

    return StudyRecorder()


def _machine() -> str:
    """The driver machine, for throughput.json: a study resumed elsewhere says which runs' times came from where."""
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def run_study(spec: StudySpec, out: Path, address: str | None = None) -> dict:
    """Run every (method, seed) that has no record in OUT/runs/ yet, then write the tables from all the records."""
    from ray import tune

    from gce_search.search.cluster import JsonLoggerKeepingLocal
    from gce_search.search.driver import configure_tune_environment, connect_ray, restore_environment, say_starting_ray
    from gce_search.search.progress import quiet_ray_notices
    from gce_search.search.step_board import close_board

    out.mkdir(parents=True, exist_ok=True)
    (out / RUNS_DIR).mkdir(exist_ok=True)
    done = read_records(spec, out)
    pending = [(m, s) for m, s in grid_runs(spec) if (m, s) not in done]
    (out / "study.yaml").write_text(dump_yaml(spec.to_dict(), sort_keys=False))
    wall = 0.0
    if pending:
        grid = [{"method": m, "seed": s, "trial_config": spec.run_config(m, s), "posthoc": spec.posthoc}
                for m, s in pending]
        notices = quiet_ray_notices(str(out))
        say_starting_ray(address)
        started = connect_ray(address)
        previous_environment = configure_tune_environment()  # quiet console: the progress lines replace Ray's
        t0 = time.perf_counter()
        try:
            resources = {"CPU": spec.resources["cpus_per_trial"], "GPU": spec.resources["gpus_per_trial"]}
            # The grid is nested under "run" so that Ray does not flatten the run configs into its search space.
            trainable = tune.with_resources(study_trainable_entry, tune.PlacementGroupFactory([resources]))
            tuner = tune.Tuner(
                trainable,
                param_space={"run": tune.grid_search(grid)},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(
                    storage_path=str((out / "ray").resolve()), name=spec.name, verbose=0,
                    # result.json per run: Ray's result grid reads it (and warns without it)
                    callbacks=[_recording_callback(spec, out, len(grid_runs(spec)), len(done)),
                               JsonLoggerKeepingLocal()]),
            )
            print("gce-search: first runs starting (a run process imports torch first: seconds)...", flush=True)
            tuner.fit()
        finally:
            wall = time.perf_counter() - t0
            notices.log_in(None)
            restore_environment(previous_environment)
            close_board(spec.name)  # a run with a long epoch put its progress there (trainables.step_progress)
            if started:
                import ray

                ray.shutdown()
            records_after = read_records(spec, out)
            invocations_path = out / RUNS_DIR / INVOCATIONS_FILE
            invocations = json.loads(invocations_path.read_text()) if invocations_path.is_file() else []
            invocations.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
                                "runs": len(records_after) - len(done), "wall_s": wall, "machine": _machine()})
            _write_json(invocations_path, invocations)
    return write_tables(spec, out, wall)


def write_tables(spec: StudySpec, out: Path, wall: float | None = None) -> dict:
    """runs.json, table.json, table.md and throughput.json from every record in OUT/runs/ of this study's grid."""
    records = read_records(spec, out)
    rows, statuses = [], {}
    for method, seed in grid_runs(spec):
        record = records.get((method, seed))
        status = record["status"] if record is not None else "not run"
        statuses[status] = statuses.get(status, 0) + 1
        for row in (record or {}).get("rows", []):
            rows.append({"method": method, "seed": seed, "train_s": record.get("train_s"),
                         "images_per_s": record.get("images_per_s"), **row})
    rows.sort(key=lambda r: (list(spec.methods).index(r["method"]), r["seed"], list(spec.posthoc).index(r["posthoc"])))
    table = aggregate(rows)
    (out / "runs.json").write_text(json.dumps(rows, indent=1))
    from gce_search.search.reports import json_safe

    (out / "table.json").write_text(json.dumps(json_safe(table), indent=1))  # a std over one seed is null
    md = markdown_tables(spec, table, rows, statuses)
    (out / "table.md").write_text(md + "\n")
    invocations_path = out / RUNS_DIR / INVOCATIONS_FILE
    invocations = json.loads(invocations_path.read_text()) if invocations_path.is_file() else []
    train_s = [r["train_s"] for r in records.values() if r.get("train_s") is not None]
    speed = [r["images_per_s"] for r in records.values() if r.get("images_per_s") is not None]
    throughput = {"runs": len(train_s), "wall_s": sum(i["wall_s"] for i in invocations),
                  "mean_run_s": sum(train_s) / max(len(train_s), 1),
                  "mean_images_per_s_per_run": sum(speed) / max(len(speed), 1),
                  "invocations": invocations}
    (out / "throughput.json").write_text(json.dumps(throughput, indent=1))
    diagrams = sorted(str(p) for p in out.glob("reliability_*.png"))
    return {"rows": rows, "table": table, "markdown": md, "statuses": statuses,
            "wall_s": wall if wall is not None else throughput["wall_s"], "throughput": throughput,
            "diagrams": diagrams, "records": len(records)}


def study_trainable_entry(config: dict) -> None:
    """The grid nests each run's settings under config['run']."""
    study_trainable(config["run"])


def cmd_study(args) -> int:
    from gce_search.errors import UsageError

    spec = load_study(args.study, args.overrides)
    out = Path(args.out or f"gce-study-{spec.name}").resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; valid: a new directory, or a study's output directory to resume")
    n = len(grid_runs(spec))
    done = read_records(spec, out) if out.is_dir() else {}  # a mismatched record is refused before anything runs
    if len(done) == n and (out / "table.md").exists():
        raise UsageError(f"--out {out}: already holds a finished study (table.md and all {n} runs); valid: a new "
                         "directory, or more seeds into it with --set seeds=N")
    print(f"study {spec.name}: {len(spec.methods)} methods x {len(spec.seeds)} seeds = {n} runs, "
          f"post-hoc: {', '.join(spec.posthoc)}; writing to {out}")
    if done:
        print(f"resuming: {len(done)} of {n} runs are recorded in {out / RUNS_DIR}; running the other {n - len(done)}")
    summary = run_study(spec, out, args.address)
    print(summary["markdown"])
    t = summary["throughput"]
    print(f"\nthroughput: {t['mean_run_s']:.1f} s per run, {t['mean_images_per_s_per_run']:.0f} training images/s "
          f"per run")
    print(f"{summary['records']} of {n} runs recorded; this command: {summary['wall_s']:.0f} s; tables: "
          f"{out / 'table.md'}; per run: {out / RUNS_DIR}")
    for p in summary["diagrams"]:
        print(f"reliability diagram: {p}")
    if summary["records"] < n:
        print(f"{n - summary['records']} runs have no record (failed or interrupted): the same command again runs "
              "only those", flush=True)
        return 1
    return 0 if summary["rows"] else 1
