"""Shared test set-up."""
from __future__ import annotations

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
