"""Helpers the tests share (imported as `from tests.helpers import ...`): tiny trained runs,
fault injection, face pictures, FER+ folders, model-shape checks and command lines run at the cost of
one start-up."""

from pathlib import Path

# The repository's root, and FER2013 in the shared data folder beside it (tests that need it skip
# cleanly without it).
REPO = Path(__file__).resolve().parents[2]
REAL_DATA_DIR = REPO.parent / "shared" / "data" / "fer2013"
