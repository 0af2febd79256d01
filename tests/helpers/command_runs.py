"""Many command lines of fer_flax's commands at the cost of one start-up, for the tests of how the
commands start (tests/test_cli.py).

`python -m tests.helpers.command_runs` (from the repository's root, as users run `python -m
fer_flax.<command>`) reads `{"preload": [module, ...], "runs": [{"module": ..., "args": [...],
"path": [folder, ...]}, ...]}` as JSON on stdin and writes, per run, `{"returncode": ..., "stdout":
..., "stderr": ...}` as a JSON list on stdout.

It imports the `preload` modules once (JAX, Flax, Orbax, Optuna: seconds), then runs each command line
in a forked child: the child executes `module` as `python -m module *args` does (`runpy`, as
`__main__`, with that `sys.argv`), its stdout and stderr going to files of its own, and exits with the
status the interpreter would give (a `SystemExit` message printed to stderr with status 1, an uncaught
exception's traceback with status 1). So a command line costs the command's own work, not the imports
again. Nothing here starts a JAX backend, so each child starts its own; `path` puts folders in front of
the child's `sys.path` (a test's own command module).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import tempfile
import time
import traceback

TIMEOUT_S = 120


def _child(module: str, args: list[str], path: list[str], out: str, err: str) -> None:
    """In the forked child: run `module` as `python -m` would, then exit without returning."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.path[:0] = path
        sys.modules.pop(module, None)  # as in `python -m`: not imported before it runs as __main__
        sys.argv = [module, *args]  # runpy puts the module's file in sys.argv[0], as `python -m` does
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise TimeoutError(f"a command line ran over {TIMEOUT_S} s")


def run_all(preload: list[str], runs: list[dict]) -> list[dict]:
    for module in preload:
        importlib.import_module(module)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(run["module"], run["args"], run.get("path", []), out, err)
            returncode = _wait(pid)
            with open(out) as o, open(err) as e:
                results.append({"returncode": returncode, "stdout": o.read(), "stderr": e.read()})
    return results


if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(run_all(request["preload"], request["runs"]), sys.stdout)
