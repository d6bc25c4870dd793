"""Fixtures the stage, checkpoint and CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and on a busy 2-core machine two intra-op threads wait on each
    other (measured 20-30x slower): a module that uses it runs on one, and the count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
