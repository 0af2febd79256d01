"""The best checkpoints (`fer_flax.run.best_checkpoints`), damaged or deleted from outside: a damaged
best step that a resume recomputes is written again, and one that cannot be recomputed, or a deleted
one, is named with the step that takes its place, in the warning and in summary.json.

The runs are the tiny trained run (conftest's `trained_run`: evaluations and checkpoints at steps 2
and 4) or a copy of it; a kill comes from tests/helpers/fault_injection.py, in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import integrity
from fer_flax.training import loop as train
from tests.helpers import REPO
from tests.helpers.fault_injection import flip_a_bit, largest_file
from tests.helpers.trained_runs import TINY_FLAGS, tiny_config

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")


@pytest.fixture
def copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, to damage."""
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _summary(workdir) -> dict:
    return json.loads((Path(workdir) / "summary.json").read_text())


def _best_weights(workdir, step: int):
    """The weights best/<step> holds, read with Orbax's own API."""
    manager = ocp.CheckpointManager(
        Path(workdir) / "best", item_names=("model",), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    try:
        restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
        return jax.device_get(restored["model"])
    finally:
        manager.close()


def _set_aside(workdir) -> list[str]:
    return sorted(p.name for p in (Path(workdir) / integrity.CORRUPT_DIR).iterdir())


def test_a_damaged_best_step_is_written_again_when_the_resume_recomputes_it(trained_run, tmp_path):
    workdir = tmp_path / "run"
    # Killed inside the commit of checkpoints/4, after best/4 was committed: a rerun resumes from 2.
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "fault_injection.py"), "save:4", *TINY_FLAGS]
    killed = subprocess.run(
        [*cmd, f"--workdir={workdir}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "4" in os.listdir(workdir / "best") and "4" not in os.listdir(workdir / "checkpoints")
    damaged = largest_file(workdir / "best" / "4")
    flip_a_bit(damaged)

    pattern = r"best are damaged: step 4 \(.* does not match its checksum.*resumes from step 2 and writes"
    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning, match=pattern):
        summary = train.train_and_evaluate(tiny_config(0), str(workdir))
    assert integrity.has_manifest(str(workdir / "best" / "4"))
    assert integrity.problem(str(workdir / "best" / "4")) is None  # intact again
    assert [name.split("-")[:2] for name in _set_aside(workdir)] == [["best", "4"]]
    reference = _summary(trained_run)
    assert (summary["best_step"], summary["best_val_accuracy"]) == (
        reference["best_step"],
        reference["best_val_accuracy"],
    )
    # Written again from the recomputed step: the uninterrupted run's weights, bit for bit.
    healed, expected = _best_weights(workdir, 4), _best_weights(trained_run, 4)
    for x, y in zip(jax.tree.leaves(healed), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("harm", ["deleted", "damaged"])
def test_a_lost_best_step_is_named_and_summary_json_moves_to_the_best_intact_one(copy, harm):
    lost = _summary(copy)["best_step"]
    (other,) = [int(p.name) for p in (copy / "best").iterdir() if p.name.isdigit() and int(p.name) != lost]
    if harm == "deleted":
        shutil.rmtree(copy / "best" / str(lost))
        why = re.escape(f"{copy}/best/{lost} is missing")
    else:
        flip_a_bit(largest_file(copy / "best" / str(lost)))
        why = r"damaged: .* does not match its checksum .*"
    # A plain rerun of the finished run: it resumes from step 4 and can recompute nothing.
    pattern = (
        rf"best are lost: step {lost} \({why}\)\. This run resumes from step 4 and cannot recompute them"
        rf".* The best checkpoint is now step {other} \(val accuracy \d\.\d{{4}}\) instead of step {lost}"
    )
    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning, match=pattern) as record:
        summary = train.train_and_evaluate(tiny_config(0), str(copy))
    assert len([w for w in record if w.category is checkpoint_lib.CorruptCheckpointWarning]) == 1
    assert summary["best_step"] == other == _summary(copy)["best_step"]
    marker = ".missing" if harm == "deleted" else ""
    (name,) = _set_aside(copy)
    assert name.startswith(f"best-{lost}-") and name.endswith(marker)

    # Said once: the next rerun finds best/ as the last one left it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpoint_lib.CorruptCheckpointWarning)
        assert train.train_and_evaluate(tiny_config(0), str(copy))["best_step"] == other
