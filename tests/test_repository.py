"""The repository describes the product, not how it was made: no tracked file mentions work sessions
or periods, borrowed machines and their time, the tools it was written with, issue numbers, or folders
of the machines it was written on. Text files only; this file (which holds the word list) is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# What each pattern is about -> the pattern (case-insensitive). Technical uses of the same words pass:
# pytest's `scope="session"`, a `test session`, onnxruntime's `InferenceSession`, a variable named
# `session`, `start_new_session`, `release`, a `lent`-free "equivalent".
# "the session" and "a session" are left out: pytest's hooks and fixtures speak of them.
_SESSION_WORDS = (
    "this|that|one|each|every|per|previous|next|earlier|later|last|first|second|third|same|other|"
    "another|whole|current|work|working|development|coding"
)
WORDS: dict[str, str] = {
    "a work session": (
        rf"\b(?:{_SESSION_WORDS})\s+session\b(?!-)"  # this session, the previous session, per session
        r"|(?<!test )\bsession(?:'s|s)\b"  # sessions, the session's time (not the test session's)
        r"|\bsession\s+\d"  # session 3
    ),
    "a work period": r"\bwork(?:ing)?[- ](?:period|day|block|shift)s?\b|\bsprints?\b",
    "a borrowed machine": r"\blease[sd]?\b|\blent\b|\bloan(?:s|ed)?\b|\bnot drawn\b|\bdevice[- ]time\b"
    r"|\bthe device tool\b",
    "a development tool": r"\bclaude\b|\banthropic\b|\bsub-?agents?\b|\bhelper agents?\b"
    r"|\b(?:coding|ai) (?:agent|assistant)s?\b|\bchatgpt\b|\bcopilot\b",
    "an issue reference": r"\bissues?\s+#?\d+|\bissue\s*#|\bthe issue's\b"
    r"|\b(?:the|this|that|an?) issue (?:asks|asked|says|said|wants|wanted|requires|required|sets|set|"
    r"calls|targets|bar)\b",
    "a development machine's folder": r"(?<![\w.~-])/(?:work|root)/|(?<![\w.~-])/home/[\w.-]+",
}
PATTERNS = {what: re.compile(pattern, re.IGNORECASE) for what, pattern in WORDS.items()}


def hits(line: str) -> list[str]:
    """What `line` mentions of the development (the WORDS keys of its matches)."""
    return [what for what, pattern in PATTERNS.items() if pattern.search(line)]


@pytest.mark.parametrize(
    "line",
    [
        "@pytest.fixture(scope='session')",
        '@pytest.fixture(scope="session")',
        "session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])",
        "probabilities = session.run(['probabilities'], {'images': faces})[0]",
        "options = onnxruntime.SessionOptions()",
        "subprocess.Popen(args, start_new_session=True)",
        "def pytest_sessionfinish(session):",
        "each xdist worker writes its file at the end of the test session",
        "Record (each xdist worker writes PREFIX_<worker>.json at the end of the session):",
        "made once per test process, in a session temporary folder (tmp_path_factory)",
        "made once per test session, in the test session's temporary folder",
        "the kernel releases the lock when the holder dies; released, release(fd)",
        "the batched equivalent of the augmentation; an issue with the data path",
        "--workdir workdirs/run --config.data.path=../shared/data/fer2013/fer2013.csv.gz",
        "see https://example.org/work/fer and $WORKDIR/checkpoints",
        "fits the recipe's time budget on 2 CPU cores",
    ],
)
def test_technical_uses_pass(line):
    assert hits(line) == []


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("Measured in this session, quiet machine", "a work session"),
        ("the previous session's figures", "a work session"),
        ("(2026-11-29, session 3)", "a work session"),
        ("other sessions shared the machine", "a work session"),
        ("HERE, once per session: downloads the wheels", "a work session"),
        ("the time of one work period", "a work period"),
        ("the second H200 lease", "a borrowed machine"),
        ("No GPU was lent to this run", "a borrowed machine"),
        ("15 minutes of device time in all", "a borrowed machine"),
        ("device status: not drawn", "a borrowed machine"),
        ("written with Claude", "a development tool"),
        ("a subagent measured it", "a development tool"),
        ("the helper agent's report", "a development tool"),
        ("issue 19 (distillation)", "an issue reference"),
        ("Issue #6's bar", "an issue reference"),
        ("the issue's bar, 0.66 in 30 minutes", "an issue reference"),
        ("(26x; the issue asks 5x)", "an issue reference"),
        ("git clone /work/main C", "a development machine's folder"),
        ("--workdir /root/runs/recipe", "a development machine's folder"),
        ("cd /home/alice/fer", "a development machine's folder"),
    ],
)
def test_development_words_are_found(line, what):
    assert what in hits(line)


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and p != THIS_FILE]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary (or missing) file."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # deleted in the work tree, or a submodule
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_describes_the_development():
    found = []
    for name in _tracked_files():
        text = _text(ROOT / name)
        for number, line in enumerate((text or "").splitlines(), start=1):
            for what in hits(line):
                found.append(f"{name}:{number}: {what}: {line.strip()[:120]}")
    if found:
        pytest.fail(f"{len(found)} line(s) describe the development, not the product:\n" + "\n".join(found))
