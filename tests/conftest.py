"""Shared fixtures. Ray, MLflow and temp files are confined to a per-session test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_TOKENIZER = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dnabert2_tokenizer"
)


def gue_dir() -> Path | None:
    value = os.environ.get("ABLATE_GUE_DIR")
    return Path(value) if value else None


requires_gue = pytest.mark.skipif(gue_dir() is None, reason="ABLATE_GUE_DIR is not set")


@pytest.fixture(scope="session")
def real_gue() -> Path:
    path = gue_dir()
    if path is None:
        pytest.skip("ABLATE_GUE_DIR is not set")
    return path


@pytest.fixture(scope="session")
def dnabert2_tokenizer_path() -> Path:
    path = SHARED_TOKENIZER / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"DNABERT-2 tokenizer not found at {path}")
    return path
