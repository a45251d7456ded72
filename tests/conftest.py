"""Shared test set-up."""
from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    """Checkpoint folders that in-process trials hand to their reporters (tempfile.mkdtemp) go under pytest's own
    temporary directory, which pytest prunes, instead of accumulating in the system's /tmp. In-process only: Ray's
    session directory and socket paths are left alone."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tmp"))
    yield
    tempfile.tempdir = previous


@pytest.fixture(autouse=True, scope="session")
def _precision_cache_under_pytest(tmp_path_factory):
    """The bf16 / channels_last probe cache (trainables.precision) of the test session: a fresh directory, so the
    tests neither read decisions a user's runs left in ~/.cache nor write there. Set in the environment, so trial
    processes that Ray and the CLI tests start use it too."""
    previous = os.environ.get("GCE_SEARCH_CACHE_DIR")
    os.environ["GCE_SEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("gce-search-cache"))
    yield
    if previous is None:
        os.environ.pop("GCE_SEARCH_CACHE_DIR", None)
    else:
        os.environ["GCE_SEARCH_CACHE_DIR"] = previous
