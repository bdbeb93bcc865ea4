"""Runs every scenario under testdata/ (SPINDLE_REWRITE=1 rewrites expected output)."""

from __future__ import annotations

import pathlib

import pytest

from tests.kv.raft.datadriven import run_file

TESTDATA = pathlib.Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.name)
def test_scenario(path: pathlib.Path) -> None:
    run_file(path)
