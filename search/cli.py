"""`gce-search` command line.

Each subcommand is a thin parser; the work happens in the module named beside it, imported lazily so that
`gce-search validate` answers without importing torch or Ray.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gce_search.errors import ConfigError, UsageError

# subcommand -> (module, function); the function takes the parsed argparse.Namespace and returns an exit code.
COMMANDS = {
    "run": ("gce_search.search.driver", "cmd_run"),
    "resume": ("gce_search.search.driver", "cmd_resume"),
    "validate": ("gce_search.search.validate_command", "cmd_validate"),
    "pareto": ("gce_search.search.reports", "cmd_pareto"),
    "export": ("gce_search.search.export", "cmd_export"),
    "train": ("gce_search.search.train_command", "cmd_train"),
    "tensorboard": ("gce_search.search.tensorboard", "cmd_tensorboard"),
    "dashboard": ("gce_search.search.dashboard", "cmd_dashboard"),
    "study": ("gce_search.search.study", "cmd_study"),
    "recalibrate": ("gce_search.search.recalibrate", "cmd_recalibrate"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gce-search",
        description="Hyperparameter search for calibrated classification (GCE, focal family, ATS) on Ray Tune.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run a search (default: the bundled quickstart space, local Ray, CPU)")
    r.add_argument("space", nargs="?", default=None,
                   help="space YAML file or the name of a shipped space (default: quickstart)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    r.add_argument("--storage", default=None, help="storage directory or URI (default: ./gce-search-results)")
    r.add_argument("--name", default=None, help="experiment name (default: the space name plus a timestamp)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed setting by dotted path, e.g. --set train.epochs=5 (repeatable)")

    rs = sub.add_parser("resume", help="finish an interrupted search")
    rs.add_argument("experiment_dir")
    rs.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")

    v = sub.add_parser("validate", help="check a space file; lists every problem")
    v.add_argument("space")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--skip-data", action="store_true",
                   help="do not look at the data files (a space for a cluster whose nodes hold the data)")

    pa = sub.add_parser("pareto", help="print the accuracy-vs-ECE front; write pareto.csv/png and summary.json")
    pa.add_argument("experiment_dir")

    e = sub.add_parser("export", help="write one retraining YAML per chosen trial")
    e.add_argument("experiment_dir")
    e.add_argument("--select", default="pareto", help="pareto | pareto-robust (the front plus the trials tied with it "
                                                      "within noise) | best | top:K (default: pareto)")
    e.add_argument("--out", default=None, help="output directory (default: EXPERIMENT_DIR/export)")

    t = sub.add_parser("train", help="full retrain from a config YAML (an exported one or your own)")
    t.add_argument("config")
    t.add_argument("--out", default=None, help="output directory (default: ./train-<config name>)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    tb = sub.add_parser("tensorboard", help="serve the experiment's TensorBoard on 127.0.0.1")
    tb.add_argument("experiment_dir")
    tb.add_argument("--port", type=int, default=6006)

    db = sub.add_parser("dashboard", help="serve optuna-dashboard for the experiment's study on 127.0.0.1 "
                                          "(needs the 'dashboard' extra)")
    db.add_argument("experiment_dir")
    db.add_argument("--port", type=int, default=8080)

    st = sub.add_parser("study", help="fixed-hyperparameter grid of methods x seeds, post-hoc TS/ATS, on test")
    st.add_argument("study", help="study YAML file or the name of a shipped study (spaces/studies/)")
    st.add_argument("--out", default=None, help="output directory (default: ./gce-study-<name>)")
    st.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override by dotted path, e.g. --set seeds=3 or --set base.train.epochs=5")
    rc = sub.add_parser("recalibrate", help="refit every complete trial's calibrator on its checkpoint, without "
                                            "retraining; writes EXPERIMENT_DIR/recalibrated/NAME/")
    rc.add_argument("experiment_dir")
    rc.add_argument("--calibration", default="refine",
                    help="refine (default: the cross-validated choice per model) | ts | ats | none | a YAML file "
                         "with a calibration: section | an inline mapping '{method: ats, breakpoints: [...]}'")
    rc.add_argument("--name", default=None, help="NAME of the new directory (default: the preset or file name)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = COMMANDS[args.command]
    func = getattr(importlib.import_module(module_name), func_name)

    try:
        return int(func(args) or 0)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    except UsageError as err:
        print(f"gce-search {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gce-search {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
