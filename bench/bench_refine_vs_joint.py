"""Calibration refinement against jointly searched breakpoints, at an equal training budget, on Fashion-MNIST-LT.

For each search seed:
- **joint**: `gce-search run bench/studies/refine_vs_joint_lt100.yaml` (the outer TPE samples the loss, λ, lr and
  one ATS breakpoint vector per trial), its front's hypervolume on val and, for the same val-chosen front, on test;
- **joint → refined**: `gce-search recalibrate` of that experiment with the cross-validated refinement: the same
  trained trials, each with the calibrator chosen inside its calib split;
- **refine search** (with `--refine-search`): the same space without the breakpoints and with
  `calibration.breakpoints: {refine: cv}`, so the outer TPE searches the training parameters only.

Prints one row per seed and the paired mean difference with a 95% interval; writes DIR/results.json.

    python bench/bench_refine_vs_joint.py --seeds 5 --out bench-out/refine_vs_joint [--refine-search]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "bench" / "studies" / "refine_vs_joint_lt100.yaml"


def front_hv(exp_dir: Path) -> dict:
    from gce_search.search.pareto import hypervolume_acc_ece
    from gce_search.search.records import load_experiment

    exp = load_experiment(exp_dir)
    front = exp.front()
    return {"hv_val": exp.hypervolume(),
            "hv_test": hypervolume_acc_ece([(t.metric("test/acc"), t.metric("test/ece")) for t in front]),
            "front": len(front), "complete": len(exp.complete()),
            "methods": sorted(str(t.final.get("calibration/method", t.config["calibration"]["method"]))
                              for t in exp.complete())}


def run(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        sys.exit(f"{' '.join(cmd)} exited {code}; see {log}")
    return time.perf_counter() - started


def paired(a: list[float], b: list[float]) -> str:
    d = np.asarray(b) - np.asarray(a)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.4f} ± {half:.4f} (95% CI; {int((d > 0).sum())}/{len(d)} seeds better)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="bench-out/refine_vs_joint")
    parser.add_argument("--refine-search", action="store_true", help="also run the refine-mode search per seed")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load(SPACE.read_text())
    refine_space = dict(space, calibration={**space["calibration"], "breakpoints": {"refine": "cv"}},
                       space={k: v for k, v in space["space"].items() if k != "calibration.breakpoints"})
    (out / "refine_space.yaml").write_text(yaml.safe_dump(refine_space, sort_keys=False))
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        name = f"joint-{seed}"
        if not (out / name / "summary.json").is_file():
            row["joint_s"] = run([sys.executable, "-m", "gce_search", "run", str(SPACE), "--storage", str(out),
                                  "--name", name, "--set", f"search.seed={seed}"], out / f"{name}.log")
        row["joint"] = front_hv(out / name)
        refined = out / name / "recalibrated" / "refine"
        if not refined.is_dir():
            row["recalibrate_s"] = run([sys.executable, "-m", "gce_search", "recalibrate", str(out / name),
                                        "--name", "refine"], out / f"{name}-recalibrate.log")
        row["joint_refined"] = front_hv(refined)
        if args.refine_search:
            name = f"refine-{seed}"
            if not (out / name / "summary.json").is_file():
                row["refine_s"] = run([sys.executable, "-m", "gce_search", "run", str(out / "refine_space.yaml"),
                                       "--storage", str(out), "--name", name, "--set", f"search.seed={seed}"],
                                      out / f"{name}.log")
            row["refine_search"] = front_hv(out / name)
        rows.append(row)
        arms = [k for k in ("joint", "joint_refined", "refine_search") if k in row]
        print(f"seed {seed}: " + "  ".join(f"{k} val {row[k]['hv_val']:.4f} test {row[k]['hv_test']:.4f}"
                                           for k in arms), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    for arm in ("joint_refined", "refine_search"):
        if all(arm in r for r in rows):
            for split in ("val", "test"):
                print(f"{arm} - joint, hv_{split}: "
                      f"{paired([r['joint'][f'hv_{split}'] for r in rows], [r[arm][f'hv_{split}'] for r in rows])}")


if __name__ == "__main__":
    main()
