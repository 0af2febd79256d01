"""Test-wide set-up: four simulated CPU devices, so every test exercises the sharded code path.

XLA reads the flag when the backend starts, so it must be set before anything imports jax.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest

REAL_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"


@pytest.fixture
def real_data_dir() -> Path:
    """`../shared/data/fer2013` beside the repository; tests that need it skip cleanly without it."""
    if not (REAL_DATA_DIR / "fer2013.csv.gz").exists():
        pytest.skip(f"real FER2013 not found at {REAL_DATA_DIR}")
    return REAL_DATA_DIR
