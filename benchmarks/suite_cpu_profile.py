"""Where the test suite's CPU time goes: a pytest plugin that records each test's CPU seconds (its own
process and the programs it starts, from getrusage), and a summary of the records.

Record (each xdist worker writes PREFIX_<worker>.json at the end of the session):
  SUITE_CPU_PROFILE=/tmp/prof python -m pytest -q -n 2 -p benchmarks.suite_cpu_profile
Summarise (the total and the largest tests and files; with a second prefix, before → after):
  python benchmarks/suite_cpu_profile.py /tmp/prof [/tmp/prof_before] [--top 30]

CPU seconds, not wall seconds: they add up across the two workers and change less than wall time when
other work shares the machine (contention for memory bandwidth still inflates them).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import resource
import time

import pytest

_ENV = "SUITE_CPU_PROFILE"
_rows: list[dict] = []


def _cpu_seconds() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own, children, start = *_cpu_seconds(), time.time()
    yield
    own_after, children_after = _cpu_seconds()
    _rows.append(
        {"id": item.nodeid, "cpu": own_after - own + children_after - children, "wall": time.time() - start}
    )


def pytest_sessionfinish(session):
    prefix = os.environ.get(_ENV)
    if prefix:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(f"{prefix}_{worker}.json", "w") as f:
            json.dump(_rows, f)


def load(prefix: str) -> dict[str, float]:
    """Test id → CPU seconds, over every worker's file of a run."""
    files = glob.glob(f"{prefix}_*.json")
    if not files:
        raise SystemExit(f"no records {prefix}_*.json (run pytest with {_ENV}={prefix})")
    return {row["id"]: row["cpu"] for path in files for row in json.load(open(path))}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("after", help="record prefix of the run to summarise")
    parser.add_argument("before", nargs="?", help="record prefix of an earlier run to compare with")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    after = load(args.after)
    before = load(args.before) if args.before else {}

    def cell(key_cpu: float, key: str, table: dict) -> str:
        return f"{table[key]:7.1f} -> {key_cpu:7.1f}" if key in table else f"{key_cpu:7.1f}"

    total = f"{sum(before.values()):.0f} -> " if before else ""
    print(f"{len(after)} tests, CPU {total}{sum(after.values()):.0f} s\n\nlargest tests:")
    for test, cpu in sorted(after.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {cell(cpu, test, before)}  {test}")
    by_file = collections.Counter()
    before_file = collections.Counter()
    for test, cpu in after.items():
        by_file[test.split("::")[0]] += cpu
    for test, cpu in before.items():
        before_file[test.split("::")[0]] += cpu
    print("\nlargest files:")
    for name, cpu in by_file.most_common(args.top):
        print(f"  {cell(cpu, name, before_file)}  {name}")


if __name__ == "__main__":
    main()
