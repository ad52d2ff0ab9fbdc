"""Shared fixtures. Ray, MLflow and temp files are confined to a per-session test folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.services", "tests.browser"]

# Ray writes ~/.ray/auth_token, lock files under /tmp and session folders under its temp dir;
# killed trials leave temp checkpoints. Keep all of it in one short-lived folder (short, since
# Ray's socket paths must stay under ~100 characters).
_SANDBOX = Path(tempfile.mkdtemp(prefix="ablt-"))
for _name in ("HOME", "TMPDIR", "RAY_TMPDIR"):
    os.environ[_name] = str(_SANDBOX)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)

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
