"""The result files of an experiment: pareto.csv, pareto.png, summary.json and the experiment-level TensorBoard
summary (`write_results`), and `gce-search pareto`. File formats: docs/results-format.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from gce_search.errors import UsageError
from gce_search.search.figures import pareto_figure
from gce_search.search.pareto import MODES, REFERENCE_POINT
from gce_search.search.records import (STATUSES, Experiment, TrialRecord, _finite, chance_accuracy_bound, chosen_metrics,
                                       describe_counts, load_experiment, require_complete)
from gce_search.search.tensorboard import write_tensorboard_summary
from gce_search.search.uncertainty import ece_uncertainty

__all__ = ["CSV_COLUMNS", "pareto_row", "pareto_rows", "summary_dict", "write_results", "format_table", "cmd_pareto"]

CSV_COLUMNS = (
    "trial", "status", "loss", "loss.lam", "loss.params", "calibration.method", "calibration.breakpoints",
    "calibration/temperatures", "epoch", "score",
    "val/acc", "val/ece", "val/ece_std", "val/ece_raw", "val/adaece", "val/nll", "val/n",
    "test/acc", "test/ece", "test/adaece", "test/nll", "test/n", "node",
    # bootstrap 95% intervals and the further calibration and selective-prediction measures (docs/calibration.md)
    "val/ece_lo", "val/ece_hi", "val/smece", "val/debiased_ece", "val/aurc", "val/augrc",
    "test/ece_lo", "test/ece_hi", "test/smece", "test/debiased_ece", "test/aurc", "test/augrc",
)


def _fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def pareto_row(trial: TrialRecord) -> dict:
    """One row of pareto.csv for a trial (metric columns use the contract metric keys)."""
    loss_cfg = {k: v for k, v in trial.config.get("loss", {}).items() if k != "name"}
    lam = loss_cfg.get("lam")
    unc = ece_uncertainty(trial)
    row = {
        "trial": trial.trial_id,
        "status": trial.status,
        "loss": trial.loss,
        "loss.lam": "" if lam is None else float(lam),
        "loss.params": " ".join(f"{k}={v}" for k, v in sorted(loss_cfg.items())),
        "calibration.method": trial.calibration_method,
        "calibration.breakpoints": _fmt_list(trial.breakpoints),
        "calibration/temperatures": _fmt_list(trial.temperatures),
        "epoch": trial.final.get("epoch", ""),
        "val/ece_std": unc["std"],
        "node": trial.node or "",
    }
    for key in ("score", "val/acc", "val/ece", "val/ece_raw", "val/adaece", "val/nll", "test/acc", "test/ece",
                "test/adaece", "test/nll", *CSV_COLUMNS[CSV_COLUMNS.index("val/ece_lo"):]):
        row[key] = trial.metric(key)
    for key in ("val/n", "test/n"):
        v = trial.final.get(key)
        row[key] = int(v) if _finite(v) else ""
    return row


def pareto_rows(exp: Experiment) -> list[dict]:
    return [pareto_row(t) for t in exp.front()]


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def json_safe(value: Any) -> Any:
    """NaN/inf become null, so a JSON file stays strict JSON (summary.json, robust.json, a study's table.json,
    metrics.json of `gce-search train`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def summary_dict(exp: Experiment) -> dict:
    front = exp.front()
    complete = exp.complete()
    val_n = sorted({int(t.final["val/n"]) for t in complete if _finite(t.final.get("val/n"))})
    members = []
    for t in front:
        row = pareto_row(t)
        members.append({
            "trial": t.trial_id,
            "loss": t.loss,
            "params": t.params,
            "breakpoints": t.breakpoints,
            "temperatures": t.temperatures,
            "metrics": chosen_metrics(t),
            "val_ece_uncertainty": ece_uncertainty(t),
            "notes": list(t.notes),
            "node": row["node"],
            "path": str(t.path),
        })
    return json_safe({
        "experiment": str(exp.path.resolve()),
        "objectives": {k: m for k, m in zip(exp.objectives, MODES)},
        "reference_point": dict(zip(exp.objectives, REFERENCE_POINT)),
        "hypervolume": exp.hypervolume(),
        "hypervolume_over_time": [{"seconds": s, "hypervolume": hv} for s, hv in exp.hypervolume_over_time()],
        "counts": exp.counts(),
        # full-budget trials kept off the front because their val/acc is within noise of chance
        "degenerate": [{"trial": t.trial_id, "val/acc": t.metric("val/acc"),
                        "chance_bound": chance_accuracy_bound(t.final)} for t in exp.by_status("degenerate")],
        "val_n": val_n[0] if len(val_n) == 1 else val_n,
        "ece_uncertainty_note": (
            "val/ece of a front member carries the std in val_ece_uncertainty and the bootstrap 95% interval "
            "[val/ece_lo, val/ece_hi] in its metrics; two trials scored on the same split differ meaningfully only "
            "when their ECE gap exceeds about 2.5 std (docs/design.md: ECE is noisy at small n)"),
        "front": members,
        # every problem met reading any trial (cut result lines, unreadable checkpoints), also warned on the console
        "warnings": [f"trial {t.trial_id}: {note}" for t in exp.trials for note in t.notes],
    })


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_results(exp_dir: str | os.PathLike, tensorboard: bool = True, experiment: Experiment | None = None) -> dict:
    """Write pareto.csv, pareto.png, summary.json (and the TensorBoard experiment summary) into `exp_dir`.

    Everything is computed before the first file is written, so bad input (not an experiment directory, no
    complete trial: UsageError) leaves existing files untouched. Returns the summary dict.
    """
    exp = experiment if experiment is not None else load_experiment(exp_dir)
    require_complete(exp)
    summary = summary_dict(exp)
    csv_text = _csv_text(pareto_rows(exp))
    fig = pareto_figure(exp)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    _atomic_write(exp.path / "pareto.csv", csv_text.encode("utf-8"))
    _atomic_write(exp.path / "pareto.png", png.getvalue())
    _atomic_write(exp.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    if tensorboard:
        write_tensorboard_summary(exp.path, experiment=exp, pareto_png=png.getvalue())
    return summary


def format_table(rows: list[dict]) -> str:
    cols = [("trial", "trial", "{}"), ("loss", "loss", "{}"), ("λ", "loss.lam", "{:.3g}"),
            ("breakpoints", "calibration.breakpoints", "{}"), ("temperatures", "calibration/temperatures", "{}"),
            ("val acc", "val/acc", "{:.4f}"), ("val ECE", "val/ece", "{:.4f}"), ("±", "val/ece_std", "{:.4f}"),
            ("val AdaECE", "val/adaece", "{:.4f}"), ("val NLL", "val/nll", "{:.4f}"),
            ("test acc", "test/acc", "{:.4f}"), ("test ECE", "test/ece", "{:.4f}"),
            ("test AdaECE", "test/adaece", "{:.4f}"), ("test NLL", "test/nll", "{:.4f}")]
    table = [[h for h, _, _ in cols]]
    for row in rows:
        cells = []
        for _, key, fmt in cols:
            v = row.get(key, "")
            if isinstance(v, float) and math.isnan(v) or v == "":
                cells.append("-")
            else:
                cells.append(fmt.format(v) if isinstance(v, (int, float)) else str(v))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def _print_robust(exp: Experiment) -> None:
    """The robust set (search.robust) on the console and in robust.json; a line saying why when it cannot be
    computed (no checkpoints, trials on different val splits)."""
    from gce_search.search.robust import robust_front

    try:
        robust = robust_front(exp)
    except UsageError as err:
        print(f"robust set not computed: {err}")
        return
    _atomic_write(exp.path / "robust.json", (json.dumps(json_safe(robust), indent=2) + "\n").encode("utf-8"))
    print(f"robust set: {len(robust['members'])} trial(s) no other trial dominates in >= "
          f"{robust['level']:.0%} of {robust['resamples']} paired bootstrap resamples of the val samples "
          f"({robust['error']}); `gce-search export --select pareto-robust` exports them")
    for trial_id, with_front in robust["tied"].items():
        print(f"  {trial_id}: tied within noise with {', '.join(with_front) if with_front else 'no front member'}")
    if robust["note"]:
        print(f"  ({robust['note']})")
    print(f"wrote {exp.path / 'robust.json'}")


def _smooth_diagrams(exp: Experiment) -> None:
    """relplot's smooth reliability diagram of each front member, in EXP/reliability_smooth/<trial>.png."""
    from gce_search.search.figures import smooth_reliability_figure

    folder = exp.path / "reliability_smooth"
    written = 0
    for trial in exp.front():
        try:
            fig = smooth_reliability_figure(trial)
        except Exception as err:  # a figure must not cost the result files
            print(f"smooth reliability diagram of trial {trial.trial_id} not drawn: {type(err).__name__}: {err}")
            continue
        if fig is None:
            continue
        folder.mkdir(exist_ok=True)
        png = io.BytesIO()
        fig.savefig(png, format="png")
        _atomic_write(folder / f"{trial.trial_id}.png", png.getvalue())
        written += 1
    if written:
        print(f"wrote {written} smooth reliability diagram(s) (smECE, relplot) to {folder}")


def cmd_pareto(args) -> int:
    """`gce-search pareto EXPERIMENT_DIR`: print the front and write the result files."""
    exp = load_experiment(args.experiment_dir)
    summary = write_results(exp.path, experiment=exp)
    rows = pareto_rows(exp)
    print(format_table(rows))
    counts = summary["counts"]
    ref = summary["reference_point"]
    others = describe_counts({k: v for k, v in counts.items() if k not in ("complete", "total")})
    print(f"\nfront: {len(rows)} of {counts['complete']} complete trials"
          + (f" ({others})" if any(counts.get(s) for s in STATUSES if s != "complete") else "")
          + f"; hypervolume {summary['hypervolume']:.4f} against reference "
          f"(val/acc {ref['val/acc']:g}, {exp.ece_key} {ref[exp.ece_key]:g}); val n = {summary['val_n']}")
    _print_robust(exp)
    _smooth_diagrams(exp)
    print(f"wrote {exp.path / 'pareto.csv'}, {exp.path / 'pareto.png'}, {exp.path / 'summary.json'}, "
          f"{exp.path / 'tensorboard'}")
    return 0
