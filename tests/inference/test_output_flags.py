"""Every output flag of the commands that write results (evaluate, predict, export, explain, multiseed,
leaderboard) is checked before any model or data is read: an output path that cannot be written stops
the command at once with one `error:` line naming the flag and the path, and the check leaves nothing
behind.

The command lines run as processes (forked children of one process that imported the commands once,
tests/helpers/command_runs.py). Each one names a workdir that does not exist: had it been read first,
the error would be about the workdir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.xdist_group("cli")

ABSENT = "/nonexistent/fer_flax_run"
SMOKE = "--config=configs/simple_cnn.py:smoke"
PRELOAD = [
    "fer_flax.inference.evaluate",
    "fer_flax.inference.predict",
    "fer_flax.inference.export",
    "fer_flax.inference.explain",
    "fer_flax.research.multiseed",
    "fer_flax.research.leaderboard",
]


def _cases(tmp: Path) -> dict[str, tuple[str, list[str], str]]:
    """{case: (command module, arguments, the start of the one error line)}."""
    folder, file, face = tmp / "folder", tmp / "file", tmp / "face.png"
    absent = tmp / "absent" / "deeper"  # absent folders are made later: fine
    under_file = f"cannot be written: {file} is a file, not a folder"
    return {
        "evaluate --out folder": (
            "fer_flax.evaluate", ["--workdir", ABSENT, f"--out={folder}"],
            f"error: --out {folder} is a folder; give a file name",
        ),
        "evaluate --out under a file": (
            "fer_flax.evaluate", ["--workdir", ABSENT, f"--out={file}/r.json"],
            f"error: --out {file}/r.json {under_file}",
        ),
        "predict --out_dir file": (
            "fer_flax.predict", ["--workdir", ABSENT, f"--out_dir={file}", str(face)],
            f"error: --out_dir {file} is a file; give a folder",
        ),
        "predict --out_dir under a file": (
            "fer_flax.predict", ["--workdir", ABSENT, f"--out_dir={file}/x", str(face)],
            f"error: --out_dir {file}/x {under_file}",
        ),
        "predict --out folder": (
            "fer_flax.predict", ["--workdir", ABSENT, f"--out={folder}.json", str(face)],
            f"error: --out {folder}.json is a folder; give a file name",
        ),
        "predict --out under a file": (
            "fer_flax.predict", ["--workdir", ABSENT, f"--out={file}/p.csv", str(face)],
            f"error: --out {file}/p.csv {under_file}",
        ),
        "export --out file": (
            "fer_flax.export", ["--workdir", ABSENT, f"--out={file}"],
            f"error: --out {file} is a file; give a folder",
        ),
        "export --out under a file": (
            "fer_flax.export", ["--workdir", ABSENT, f"--out={file}/model"],
            f"error: --out {file}/model {under_file}",
        ),
        "explain --out file": (
            "fer_flax.explain", ["--workdir", ABSENT, f"--out={file}"],
            f"error: --out {file} is a file; give a folder",
        ),
        "multiseed --workdir file": (
            "fer_flax.multiseed", [SMOKE, f"--workdir={file}", f"--config.data.path={ABSENT}.csv"],
            f"error: --workdir {file} is a file; give a folder",
        ),
        "leaderboard --out folder": (
            "fer_flax.leaderboard", [f"--out={folder}", ABSENT],
            f"error: --out {folder} is a folder; give a file name",
        ),
        "leaderboard --out under a file": (
            "fer_flax.leaderboard", [f"--out={file}/t.md", ABSENT],
            f"error: --out {file}/t.md {under_file}",
        ),
        # A path that can be made passes the check: the command goes on to the missing workdir, or
        # for multiseed to the missing data, and a failed start takes back the root it made.
        "multiseed --workdir absent": (
            "fer_flax.multiseed", [SMOKE, f"--workdir={absent}", f"--config.data.path={ABSENT}.csv"],
            f"error: config.data.path='{ABSENT}.csv' does not exist",
        ),
        "export --out absent": (
            "fer_flax.export", ["--workdir", ABSENT, f"--out={absent}"],
            f"error: {ABSENT}/config.json not found",
        ),
    }  # fmt: skip


def _run(cases: dict[str, tuple[str, list[str], str]]) -> dict[str, dict]:
    runs = [{"module": module, "args": args} for module, args, _ in cases.values()]
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.command_runs"],
        input=json.dumps({"preload": PRELOAD, "runs": runs}), cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(cases, json.loads(done.stdout), strict=True))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _assert_refused(result: dict, start: str) -> None:
    assert result["returncode"] == 1, result
    assert result["stderr"].count("\n") == 1 and result["stderr"].startswith(start), result["stderr"]
    assert result["stdout"] == "", result["stdout"]  # nothing was loaded, predicted or printed


def test_output_flags_are_checked_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "face.png").write_bytes(b"")  # never read
    before = _tree(tmp_path)
    cases = _cases(tmp_path)
    results = _run(cases)
    for case, (_, _, start) in cases.items():
        result = results[case]
        assert result["returncode"] == 1 and result["stderr"].startswith(start), (case, result["stderr"])
        if "absent" not in case:
            _assert_refused(result, start)
    assert _tree(tmp_path) == before  # no probe file, no folder made


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_an_output_folder_without_write_permission_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        cases = {
            "predict": (
                "fer_flax.predict", ["--workdir", ABSENT, f"--out_dir={locked}/out", str(locked / "f.png")],
                f"error: --out_dir {locked}/out cannot be written: {locked} is not writable",
            ),
            "evaluate": (
                "fer_flax.evaluate", ["--workdir", ABSENT, f"--out={locked}/r.json"],
                f"error: --out {locked}/r.json cannot be written: {locked} is not writable",
            ),
        }  # fmt: skip
        results = _run(cases)
        for case, (_, _, start) in cases.items():
            _assert_refused(results[case], start)
    finally:
        locked.chmod(0o755)
