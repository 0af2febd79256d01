"""Helpers the tests share (imported as `from tests.helpers import ...`): tiny trained runs,
fault injection, face pictures, FER+ folders, model-shape checks and command lines run at the cost of
one start-up."""

import os
from pathlib import Path

# The repository's root, and FER2013 in the shared data folder beside it (tests that need it skip
# cleanly without it).
REPO = Path(__file__).resolve().parents[2]
REAL_DATA_DIR = REPO.parent / "shared" / "data" / "fer2013"


def repo_env() -> dict[str, str]:
    """The environment of a command the tests start: this repository's fer_flax, unbuffered output."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to compare a folder before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
