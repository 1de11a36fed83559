"""Fixtures shared by every test module: where the speech corpus lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"speech corpus not found at {CORPUS} (tests read ../shared/corpus from the repository root)")
    return CORPUS
