"""`python -m gce_search ...` is the `gce-search` command."""
import sys

from gce_search.search.cli import main

sys.exit(main())
