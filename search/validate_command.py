"""`gce-search validate SPACE [--set k=v] [--skip-data]`: the space checker and the data-file checks, importing
neither torch, Ray nor Optuna (numpy only for the data checks, which --skip-data leaves out)."""
from __future__ import annotations

import sys

from gce_search.errors import ConfigError
from gce_search.spaces.loading import load_spec
from gce_search.spaces.validation import data_problems_of


def cmd_validate(args) -> int:
    """`gce-search validate SPACE [--set k=v]`: 'OK: ...' and exit 0, or every problem, one per line, exit 2."""
    try:
        spec = load_spec(args.space, getattr(args, "overrides", None) or ())
        if not getattr(args, "skip_data", False):
            problems = data_problems_of(spec)
            if problems:
                raise ConfigError(problems, spec.source)
    except ConfigError as err:
        head = f"{err.source}: " if err.source else ""
        print(f"INVALID: {head}{len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"OK: {spec.summary()}")
    return 0
