"""Fixtures the stage, checkpoint and CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stage_helpers import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, tokenizer): the tiny corpus and tokenizer of tests/stage_helpers.py."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh NANOCHAT_PL_HOME for the test (runs, checkpoints and downloads land there)."""
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
