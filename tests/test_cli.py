"""The command-line preamble (fer_flax.cli) as users meet it, for every `python -m fer_flax.<command>`:
`--help` prints the command's usage and flags and exits 0; an unknown flag, or a positional argument
for a command that takes none, is one `error:` line and status 1 without a traceback; and an expected
error after the JAX start-up is one `error:` line too, with absl's INFO lines (JAX's notes on its
backends) kept off stderr at the default verbosity.

Each command line runs as its own process. Starting Python with JAX, Flax and Orbax takes seconds, so
the command lines run as forked children of one process that imported them once
(tests/helpers/command_runs.py); one check runs `python -m` itself and compares.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.xdist_group("cli")  # one worker runs the module's command lines, once

SMOKE = "configs/simple_cnn.py:smoke"
ABSENT = "/nonexistent/fer_flax"
# An absl log line: a level letter, the date and time, the thread, the source line.
ABSL_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ", re.MULTILINE)


def _commands(tmp: Path) -> dict[str, dict]:
    """Per command: its real module, a flag of its own, the flags it needs to get past parsing,
    whether it takes positional arguments, and a command line that fails with an expected error
    after its start-up (the JAX backend started, for the commands that run JAX)."""
    absent_csv = f"--config.data.path={ABSENT}.csv"
    return {
        "fer_flax.main": dict(
            module="fer_flax.main", flag="--coordinator_address", arguments=False,
            required=["--config", SMOKE, "--workdir", str(tmp / "main")],
            failing=["--config", SMOKE, "--workdir", str(tmp / "main"), absent_csv],
        ),
        "fer_flax.convert": dict(
            module="fer_flax.convert", flag="--records_per_shard", arguments=False,
            required=["--source", ABSENT, "--out", str(tmp / "records")],
            failing=["--source", f"{ABSENT}.csv", "--out", str(tmp / "records")],
        ),
        "fer_flax.evaluate": dict(
            module="fer_flax.inference.evaluate", flag="--split", arguments=False,
            required=["--workdir", ABSENT], failing=["--workdir", ABSENT],
        ),
        "fer_flax.predict": dict(
            module="fer_flax.inference.predict", flag="--faces", arguments=True,
            required=["--workdir", ABSENT], failing=["--workdir", ABSENT, "face.png"],
        ),
        "fer_flax.serve": dict(
            module="fer_flax.inference.serve.command", flag="--max_upload_mb", arguments=False,
            required=[], failing=["--workdir", ABSENT],
        ),
        "fer_flax.export": dict(
            module="fer_flax.inference.export", flag="--formats", arguments=False,
            required=["--workdir", ABSENT, "--out", str(tmp / "export")],
            failing=["--workdir", ABSENT, "--out", str(tmp / "export")],
        ),
        "fer_flax.bundle": dict(
            module="fer_flax.inference.bundle", flag="--dtype", arguments=False,
            required=["--workdir", ABSENT], failing=["--workdir", ABSENT, "--out", str(tmp / "bundle")],
        ),
        "fer_flax.explain": dict(
            module="fer_flax.inference.explain", flag="--methods", arguments=True,
            required=["--workdir", ABSENT, "--out", str(tmp / "explain")],
            failing=["--workdir", ABSENT, "--out", str(tmp / "explain")],
        ),
        "fer_flax.compare": dict(
            module="fer_flax.research.compare", flag="--tta", arguments=True,
            required=["--out", str(tmp / "compare")], failing=["--out", str(tmp / "compare"), ABSENT],
        ),
        "fer_flax.multiseed": dict(
            module="fer_flax.research.multiseed", flag="--seeds", arguments=False,
            required=["--config", SMOKE, "--workdir", str(tmp / "multiseed")],
            failing=["--config", SMOKE, "--workdir", str(tmp / "multiseed"), "--seeds=0", absent_csv],
        ),
        "fer_flax.leaderboard": dict(
            module="fer_flax.research.leaderboard", flag="--out", arguments=True,
            required=[], failing=[ABSENT],
        ),
        "fer_flax.sweep": dict(
            module="fer_flax.research.sweep.study", flag="--pruner", arguments=False,
            required=["--config", SMOKE, "--space", f"{ABSENT}.py", "--workdir", str(tmp / "sweep")],
            failing=[
                "--config", SMOKE, "--space", f"{ABSENT}.py", "--trials=1", "--workdir", str(tmp / "sweep"),
            ],
        ),
    }  # fmt: skip


COMMANDS = sorted(_commands(Path("/")))

# A command of this test's own, for what the real commands do not do on every machine: log at INFO.
TOY_COMMAND = '''"""toy: logs one INFO and one WARNING line through absl."""
from absl import logging

from fer_flax import cli

COMMAND = cli.Command(start_jax=False)


def define_flags() -> None:
    pass


def main(argv: list[str]) -> None:
    logging.info("toy info")
    logging.warning("toy warning")


if __name__ == "__main__":
    cli.main_of("toy_command")
'''
TOY_ARGS = {"default": [], "-v": ["-v", "0"], "--verbosity": ["--verbosity=0"]}


def _case_lines(tmp: Path) -> dict[tuple[str, str], dict]:
    runs = {}
    for name, c in _commands(tmp).items():
        runs[name, "help"] = {"module": name, "args": ["--help"]}
        runs[name, "unknown flag"] = {"module": name, "args": [*c["required"], "--no_such_flag=1"]}
        if not c["arguments"]:
            runs[name, "stray argument"] = {"module": name, "args": [*c["required"], "stray"]}
        runs[name, "failing"] = {"module": name, "args": c["failing"]}
    runs["fer_flax.main", "help before parsing"] = {
        "module": "fer_flax.main", "args": ["--config=configs/absent.py", "--no_such_flag", "-?"],
    }  # fmt: skip
    runs["fer_flax.main", "helpfull"] = {"module": "fer_flax.main", "args": ["--helpfull"]}
    (tmp / "toy").mkdir()
    (tmp / "toy" / "toy_command.py").write_text(TOY_COMMAND)
    for case, args in TOY_ARGS.items():
        runs["toy", case] = {"module": "toy_command", "args": args, "path": [str(tmp / "toy")]}
    return runs


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    tmp = tmp_path_factory.mktemp("cli")
    runs = _case_lines(tmp)
    request = {"preload": [c["module"] for c in _commands(tmp).values()], "runs": list(runs.values())}
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.command_runs"],
        input=json.dumps(request), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(runs, json.loads(done.stdout), strict=True))


def _docstring(module: str) -> str:
    path = REPO / (module.replace(".", "/") + ".py")
    return ast.get_docstring(ast.parse(path.read_text()))


def _assert_one_error_line(result: dict, starts: str = "error: ") -> None:
    assert result["returncode"] == 1, result
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(starts), result["stderr"]
    assert "Traceback" not in result["stderr"], result["stderr"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_prints_the_commands_usage_and_flags(results, name):
    command = _commands(Path("/"))[name]
    result = results[name, "help"]
    assert result["returncode"] == 0 and result["stderr"] == "", result
    usage, flags_ = result["stdout"].split("\nflags:\n")
    assert usage.strip() == _docstring(command["module"])
    assert f"  {command['flag']}:" in flags_ and "  --[no]debug:" in flags_
    assert "--verbosity" not in flags_  # absl's and the libraries' flags only with --helpfull


def test_help_comes_before_flag_parsing_and_helpfull_lists_every_flag(results):
    early = results["fer_flax.main", "help before parsing"]
    assert early["returncode"] == 0 and early["stdout"] == results["fer_flax.main", "help"]["stdout"]
    full = results["fer_flax.main", "helpfull"]
    assert full["returncode"] == 0 and "--verbosity" in full["stdout"] and "--workdir" in full["stdout"]


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_flag_is_one_error_line(results, name):
    _assert_one_error_line(results[name, "unknown flag"], "error: Unknown command line flag 'no_such_flag'")


@pytest.mark.parametrize("name", [n for n in COMMANDS if not _commands(Path("/"))[n]["arguments"]])
def test_a_positional_argument_of_a_command_that_takes_none_is_one_error_line(results, name):
    result = results[name, "stray argument"]
    _assert_one_error_line(result, "error: unexpected arguments: stray ")
    assert result["stdout"] == ""


@pytest.mark.parametrize("name", COMMANDS)
def test_an_expected_error_after_start_up_is_one_line_without_absl_info(results, name):
    result = results[name, "failing"]
    _assert_one_error_line(result)
    assert not ABSL_INFO_LINE.search(result["stderr"]), result["stderr"]
    assert result["stderr"].count("\n") == 1, result["stderr"]  # the error line, nothing else


def test_the_default_verbosity_hides_absl_info_unless_v_is_given(results):
    quiet, *verbose = (results["toy", case] for case in TOY_ARGS)
    assert quiet["returncode"] == 0 and "toy warning" in quiet["stderr"], quiet
    assert "toy info" not in quiet["stderr"] and not ABSL_INFO_LINE.search(quiet["stderr"])
    for result in verbose:
        assert result["returncode"] == 0 and ABSL_INFO_LINE.search(result["stderr"]), result
        assert "toy info" in result["stderr"]


def test_the_runner_gives_what_python_m_gives(results):
    # tests/helpers/command_runs.py stands for `python -m`: the same output for the same command line.
    command = [sys.executable, "-m", "fer_flax.main", "--help"]
    real = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    forked = results["fer_flax.main", "help"]
    assert real.returncode == forked["returncode"]
    assert (real.stdout, real.stderr) == (forked["stdout"], forked["stderr"])


def test_help_of_predict_imports_no_jax():
    # Help in a second, not after JAX's start-up: the command module imports JAX only to run.
    script = (
        "import runpy, sys\n"
        "sys.argv = ['fer_flax.predict', '--help']\n"
        "try:\n"
        "    runpy.run_module('fer_flax.predict', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'orbax', 'optax'}\n"
        "print(sorted(heavy), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr.strip() == "[]", done.stderr[-3000:]
    assert done.stdout.startswith("Classify faces") and "--workdir" in done.stdout
