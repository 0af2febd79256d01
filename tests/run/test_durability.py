"""Power loss: what a save has committed is on disk when the save returns. A rename commits a file or
a checkpoint folder, but it is an entry of the folder that holds it, which reaches the disk only when
that folder is synced; a checkpoint's own files and folders must be synced too.

No test cuts the power. This one watches the system calls of a small save (a best and a full
checkpoint through `Checkpointer.save`, then summary.json through `atomic_files`) under strace, and
checks that every committing rename is followed by an fsync of its folder, that a small file is
synced before its rename, and that every file and folder of a committed checkpoint is synced after
its commit. Skipped where strace is absent or cannot trace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

SAVE = """
import sys
import flax.struct, grain, jax.numpy as jnp
from fer_flax.base.atomic_files import write_json
from fer_flax.run.checkpoint import Checkpointer

@flax.struct.dataclass
class State:
    params: dict
    batch_stats: dict

workdir = sys.argv[1]
state = State({"w": jnp.ones((3, 3))}, {"mean": jnp.zeros(3)})
ckpt = Checkpointer(workdir, keep=1, keep_best=1)
ckpt.save(1, state, iter(grain.MapDataset.range(8).to_iter_dataset()), val_metrics={"accuracy": 0.5})
ckpt.close()
write_json(workdir + "/summary.json", {"best_step": 1})
"""

_CALL = re.compile(r"^(\d+) +(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. \w+ resumed>.*= (-?\d+)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD_PATH = re.compile(r"^\d+<(.*)>")


def _traced_calls(trace: str) -> list[tuple[str, ...]]:
    """The successful calls of an `strace -f -y` log in order: ("fsync", path) or ("rename", src, dst)."""
    calls: list[tuple[str, ...] | None] = []
    pending: dict[str, int] = {}  # pid -> index of its unfinished call
    for line in trace.splitlines():
        resumed = _RESUMED.match(line)
        if resumed:
            index = pending.pop(resumed.group(1), None)
            if index is not None and int(resumed.group(2)) < 0:
                calls[index] = None
            continue
        call = _CALL.match(line)
        if not call:
            continue
        pid, name, rest = call.groups()
        if name.startswith("rename"):
            *_, src, dst = _QUOTED.findall(rest)
            calls.append(("rename", src, dst))
        elif name in ("fsync", "fdatasync") and _FD_PATH.match(rest):
            calls.append(("fsync", _FD_PATH.match(rest).group(1)))
        else:
            continue
        if rest.endswith("<unfinished ...>"):
            pending[pid] = len(calls) - 1
        elif re.search(r"= -\d+", rest):
            calls[-1] = None
    return [c for c in calls if c is not None]


def test_every_commit_is_synced_with_its_folder(tmp_path):
    strace = shutil.which("strace")
    if strace is None or subprocess.run([strace, "-f", "-qq", "true"], capture_output=True).returncode:
        pytest.skip("strace is absent or cannot trace here")
    workdir, log = tmp_path / "run", tmp_path / "trace"
    cmd = [strace, "-f", "--seccomp-bpf", "-y", "-qq", "-o", str(log)]
    cmd += ["-e", "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable, "-c", SAVE, str(workdir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = _traced_calls(log.read_text())

    inside = str(workdir) + os.sep
    # The renames that commit: into the workdir, not inside a checkpoint Orbax is still writing.
    commits = [
        (i, call[1], call[2])
        for i, call in enumerate(calls)
        if call[0] == "rename" and call[2].startswith(inside) and "orbax-checkpoint-tmp" not in call[2]
    ]
    committed = {os.path.relpath(dst, workdir) for _, _, dst in commits}
    assert committed >= {
        "best/1",
        "checkpoints/1",
        "best/1/fer_flax_manifest.json",
        "checkpoints/1/fer_flax_manifest.json",
        "summary.json",
    }, committed

    def synced(path: str, after: int = -1, before: int | None = None) -> bool:
        return ("fsync", path) in calls[after + 1 : before]

    for i, src, dst in commits:
        assert synced(os.path.dirname(dst), after=i), f"{dst}: its folder is not synced after the rename"
        if not os.path.isdir(dst):  # a small file: its content is on disk before it replaces the old one
            assert synced(src, before=i), f"{src} is not synced before it is renamed to {dst}"
    for i, _, dst in commits:
        if os.path.isdir(dst):  # a checkpoint: everything in it, after the commit
            for dirpath, _, filenames in os.walk(dst):
                assert synced(dirpath, after=i), f"{dirpath} is not synced after {dst} is committed"
                for name in filenames:
                    if name != "fer_flax_manifest.json":  # committed (and checked) on its own
                        path = os.path.join(dirpath, name)
                        assert synced(path, after=i), f"{path} is not synced after {dst} is committed"
