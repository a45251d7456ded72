"""The figures of an experiment: the accuracy-vs-ECE scatter with its Pareto front (pareto.png, TensorBoard's
image series) and a trial's reliability diagram (TensorBoard, optuna-dashboard's artifacts)."""
from __future__ import annotations

import io
import math
from typing import Any, Iterable

import numpy as np

from gce_search.search.pareto import REFERENCE_POINT
from gce_search.search.records import Experiment, _finite
from gce_search.search.uncertainty import ece_uncertainty, val_predictions

__all__ = ["pareto_figure", "reliability_figure", "figure_png"]


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _loss_colours(losses: list[str]) -> dict[str, Any]:
    import matplotlib  # imported when a figure is drawn, not at start-up

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(losses)))}


def pareto_figure(exp: Experiment, losses: Iterable[str] | None = None):
    """Every trial with finite (val/ece, val/acc), coloured by loss; the front highlighted; a matplotlib Figure.

    `losses` fixes the loss -> colour map (default: the losses of exp.trials), so that figures of parts of one
    experiment keep its colours."""
    import matplotlib  # imported when a figure is drawn, not at start-up

    matplotlib.use("Agg")  # headless: results are written on cluster heads without a display
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    key = exp.ece_key  # val/ece unless the search minimises another calibration error (objective.ece_metric)
    plotted = [t for t in exp.trials if _finite(t.final.get("val/acc")) and _finite(t.final.get(key))]
    colours = _loss_colours(list(losses) if losses is not None else [t.loss for t in exp.trials])
    for loss, colour in colours.items():
        for status, marker, alpha in (("complete", "o", 0.9), ("stopped", "x", 0.45), ("degenerate", "v", 0.45)):
            pts = [t for t in plotted if t.loss == loss and t.status == status]
            if pts:
                ax.scatter([t.metric(key) for t in pts], [t.metric("val/acc") for t in pts], c=[colour],
                           marker=marker, alpha=alpha, s=30, label=f"{loss} ({status})")
    front = exp.front()
    if front:
        xs = [t.metric(key) for t in front]
        ys = [t.metric("val/acc") for t in front]
        # the bootstrap std of val/ece; for another ECE axis, no error bars rather than the wrong ones
        errs = [ece_uncertainty(t)["std"] if key == "val/ece" else math.nan for t in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto front (complete trials)")
        ax.errorbar(xs, ys, xerr=[e if math.isfinite(e) else 0.0 for e in errs], fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2)
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", linewidths=1.5)
    n_div = exp.counts()["diverged"]
    ax.set_xlabel(f"{key} (after calibration, lower is better)")
    ax.set_ylabel("val/acc (higher is better)")
    ax.set_title(f"{exp.path.name}: hypervolume {exp.hypervolume():.4f} vs reference "
                 f"(acc {REFERENCE_POINT[0]:g}, ece {REFERENCE_POINT[1]:g})"
                 + (f"; {n_div} diverged not shown" if n_div else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def reliability_figure(trial, front_rank: int | None = None) -> Any | None:
    """Raw vs calibrated reliability diagram of a complete trial's validation split, with the number of samples in
    each confidence bin below it, from the predictions rebuilt from its last checkpoint; None without one.

    The legend sits outside the axes: inside, it covers the bars of whichever bins it lands on.
    """
    import matplotlib  # matplotlib and torch: imported when a figure is drawn, not at start-up

    matplotlib.use("Agg")
    import torch
    from matplotlib.figure import Figure

    from gce_search.trainables.metrics import ece, reliability_bins

    try:
        preds = val_predictions(trial)
    except Exception as err:  # a figure is not worth failing the result files for
        trial.notes.append(f"no reliability diagram: {err}")
        return None
    if preds is None:
        return None
    n_bins = int(trial.config.get("objective", {}).get("n_bins", 15))
    labels = preds["labels"]
    raw = torch.softmax(preds["raw"].double(), dim=1)
    calibrated = torch.softmax(preds["calibrated"].double(), dim=1)
    method = trial.config.get("calibration", {}).get("method", "?")
    raw_bins, cal_bins = reliability_bins(raw, labels, n_bins), reliability_bins(calibrated, labels, n_bins)
    edges = raw_bins["edges"]
    width = edges[1] - edges[0]
    centres = (edges[:-1] + edges[1:]) / 2

    fig = Figure(figsize=(9.0, 6.0), dpi=100)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    counts_ax = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    filled = raw_bins["count"] > 0
    ax.bar(edges[:-1][filled], raw_bins["accuracy"][filled], width=width, align="edge", color="tab:blue",
           alpha=0.45, edgecolor="tab:blue", label=f"raw (ECE {ece(raw, labels, n_bins):.4f})")
    ax.bar(edges[:-1][filled], (raw_bins["confidence"] - raw_bins["accuracy"])[filled],
           bottom=raw_bins["accuracy"][filled], width=width, align="edge", fill=False, edgecolor="tab:red",
           hatch="//", linewidth=0.5, label="raw gap (confidence - accuracy)")
    cal_filled = cal_bins["count"] > 0
    ax.plot(centres[cal_filled], cal_bins["accuracy"][cal_filled], marker="o", color="tab:orange",
            label=f"calibrated, {method} (ECE {ece(calibrated, labels, n_bins):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.tick_params(labelbottom=False)
    where = f"front member {front_rank + 1}" if front_rank is not None else "not on the front"
    ax.set_title(f"{trial.trial_id} ({trial.loss}, {where}): validation, n = {labels.shape[0]}, {n_bins} bins",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    ax.grid(True, alpha=0.3)
    counts_ax.bar(edges[:-1] + width * 0.05, raw_bins["count"], width=width * 0.45, align="edge",
                  color="tab:blue", alpha=0.6, label="raw")
    counts_ax.bar(edges[:-1] + width * 0.5, cal_bins["count"], width=width * 0.45, align="edge",
                  color="tab:orange", alpha=0.8, label="calibrated")
    for x, c in zip(centres, raw_bins["count"]):
        if c:
            counts_ax.annotate(str(int(c)), (x, c), ha="center", va="bottom", fontsize=6,
                               xytext=(0, 1), textcoords="offset points")
    counts_ax.set_ylim(0, max(1, int(np.max(np.maximum(raw_bins["count"], cal_bins["count"])))) * 1.25)
    counts_ax.set_xlabel("confidence")
    counts_ax.set_ylabel("samples")
    counts_ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.68, top=0.93, bottom=0.09)
    return fig


def smooth_reliability_figure(trial) -> Any | None:
    """relplot's smooth reliability diagram (Błasiok & Nakkiran 2024: the kernel-smoothed accuracy against the
    confidence, its bootstrap band, the smECE with its interval, the confidences as ticks) of a complete trial's
    calibrated validation predictions, rebuilt from its last checkpoint; None without one."""
    import matplotlib  # matplotlib, relplot and torch: imported when a figure is drawn, not at start-up

    matplotlib.use("Agg")
    import relplot
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    preds = val_predictions(trial)
    if preds is None:
        return None
    probs = torch.softmax(preds["calibrated"].double(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == preds["labels"]).double()
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    import warnings

    with warnings.catch_warnings():  # relplot 1.0's pandas call is deprecated in pandas 3 (one warning per sample)
        warnings.simplefilter("ignore")
        diagram = relplot.prepare_rel_diagram(conf.numpy(), correct.numpy())
    relplot.plot_rel_diagram(diagram, fig=fig, ax=ax, use_default_style=False)  # no global style changes
    ax.set_xlabel("confidence (after calibration)")
    ax.set_ylabel("accuracy (smoothed)")
    ax.set_title(f"trial {trial.trial_id} ({trial.loss}), val n = {conf.shape[0]}", fontsize=9)
    fig.tight_layout()
    return fig
