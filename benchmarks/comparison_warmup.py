"""Compilation before the clock: each family's training program and evaluation compiled (and timed once
compiled) before its training run starts, for `benchmarks.model_comparison`.

The training loop (`fer_flax.training.loop`) compiles its programs at their first call. To keep
compilation out of a family's training time, `warm_up` builds what the loop builds for the same config
(model, learning-rate schedule, optimizer, train state, the device feed and `loop.compile_steps`' jitted
steps), runs the first calls of the loop's call plan (the first call compiles; a second call of the same
length is timed), then evaluates twice (the first compiles `inference.engine`'s evaluation function, the
second is timed). With JAX's persistent compilation cache on (`enable_compilation_cache`), the loop's own
compilation of the same programs then loads the executables from the cache instead of compiling them;
`CompileLog` counts what the loop still compiled, so a summary shows whether it did.

Warm-ups of several families can run at once in threads (`warm_up_all`): XLA compiles outside the
Python lock, so a family that compiles for minutes (GoogLeNet) hides the others' compilations. Only on
one device: the warm-ups also run their programs, and two programs that all-reduce over several
devices, launched from two threads, can each hold devices the other one waits for.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
from ml_collections import ConfigDict

from fer_flax.core import model as model_lib
from fer_flax.data import ArraySplit, resolve_spec
from fer_flax.training import feed as train_feed
from fer_flax.training import loop, multi_step, validation
from fer_flax.training.step_plan import start_state, step_plan

# JAX's monitoring events: a backend compilation (its duration; also reported for an executable loaded
# from the persistent cache, which then takes a fraction of the time) and the cache's verdicts.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"

# Estimated cost of the checkpoint written at each evaluation (Orbax save, wait and manifest) on a GPU
# machine's host, for predicting a family's training time; not measured there.
CHECKPOINT_S = 0.5
# Estimated cost of the loop's set-up before its first step (the cached data, the train state, the
# split on the device), for the same prediction; not measured on a GPU machine.
PREPARE_S = 3.0


def enable_compilation_cache(path: str) -> list[str]:
    """JAX's persistent compilation cache in `path`, for every program however quick to compile.
    Returns the options this jax does not know (then programs may compile again in training, which
    the summary's compile counts show), rather than failing the comparison."""
    unknown = []
    for option, value in (
        ("jax_compilation_cache_dir", path),
        ("jax_persistent_cache_min_compile_time_secs", 0.0),
        ("jax_persistent_cache_min_entry_size_bytes", 0),
    ):
        try:
            jax.config.update(option, value)
        except (AttributeError, ValueError, KeyError) as e:
            unknown.append(f"{option}: {e}")
    return unknown


class CompileLog:
    """The backend compilations and persistent-cache verdicts JAX reports, in order, process-wide."""

    _installed: CompileLog | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, float, str]] = []  # (event, seconds, function name)

    @classmethod
    def install(cls) -> CompileLog:
        """The process's log, listening from now on (JAX's listeners cannot be removed: one per process)."""
        if cls._installed is None:
            log = cls()
            jax.monitoring.register_event_duration_secs_listener(log._on_duration)
            jax.monitoring.register_event_listener(log._on_event)
            cls._installed = log
        return cls._installed

    def _on_duration(self, event: str, seconds: float, **kwargs: Any) -> None:
        if event == COMPILE_EVENT:
            with self._lock:
                self.events.append((event, float(seconds), str(kwargs.get("fun_name", "?"))))

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event in (CACHE_HIT_EVENT, CACHE_MISS_EVENT):
            with self._lock:
                self.events.append((event, 0.0, ""))

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def since(self, mark: int) -> dict[str, Any]:
        """What was compiled after `mark`: compilations, their seconds, the longest, cache hits and misses."""
        with self._lock:
            events = self.events[mark:]
        compiles = [(seconds, name) for event, seconds, name in events if event == COMPILE_EVENT]
        longest = max(compiles, default=(0.0, None))
        return {
            "compilations": len(compiles),
            "compile_s": round(sum(s for s, _ in compiles), 3),
            "longest_s": round(longest[0], 3),
            "longest": longest[1],
            "cache_hits": sum(event == CACHE_HIT_EVENT for event, _, _ in events),
            "cache_misses": sum(event == CACHE_MISS_EVENT for event, _, _ in events),
        }


@dataclasses.dataclass
class WarmUp:
    """One family compiled: what it took and what its training run should take."""

    family: str
    seconds: float = 0.0  # the whole warm-up: set-up, compilations, timed calls
    first_call_s: float = 0.0  # the first training call: compilation (most of it) and one call
    step_s: float = 0.0  # one training step, from a call once compiled
    eval_compile_s: float = 0.0  # the first evaluation: compilation and one evaluation
    eval_s: float = 0.0  # one evaluation (raw and EMA weights) once compiled
    call_lengths: tuple[int, ...] = ()  # the call lengths the run uses (and so compiles)
    predicted_train_s: float | None = None  # the loop's set-up, its calls, evaluations and checkpoints
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def call_lengths(config: ConfigDict, plan: dict[str, int]) -> list[int]:
    """The length of every call of the loop's call plan for `config` (`loop._loop`'s `must_end`: calls
    end at log, evaluation and checkpoint steps; no histograms, as wandb is off)."""
    every = (config.log_every_steps, plan["eval_every_steps"], config.checkpoint_every_steps)

    def must_end(step: int) -> bool:
        return any(c > 0 and step % c == 0 for c in every)

    plan_calls = multi_step.call_plan(0, plan["total_steps"], config.steps_per_call, must_end)
    return [n for _, n in plan_calls]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def _train_calls(config, data, mesh, lengths: list[int], out: WarmUp) -> tuple[Any, Any]:
    """The loop's model, state, feed and steps for `config`; runs its calls in order until each
    distinct length has run twice (compiled, then timed); returns the model and the state."""
    spec = resolve_spec(config.data)
    model = model_lib.create_model(config, spec)
    _, schedule, _, state, train_rng = start_state(config, model, spec, mesh, len(data["train"]))
    feed = train_feed.make_feed(config, data["train"], mesh)
    compiled = loop.compile_steps(config, schedule, data["train"].class_counts(), mesh)
    runs: dict[int, list[float]] = {}
    step, distinct = 0, set(lengths)
    for n in lengths:
        if all(len(runs.get(m, ())) >= 2 for m in distinct):
            break
        inputs = feed.inputs(step + 1, n)
        (state, _), seconds = _timed(lambda s=state, i=inputs: compiled.train(s, i, train_rng))
        runs.setdefault(n, []).append(seconds)
        step += n
    jax.block_until_ready(compiled.state_is_finite(state))
    feed.iterator.close()
    out.first_call_s = runs[lengths[0]][0]
    # The longest calls, which make up the run, once compiled (the first one if the plan has one call).
    n = max(runs)
    out.step_s = runs[n][-1] / n
    return model, state


def warm_up(
    name: str, config: ConfigDict, data: dict[str, ArraySplit], mesh, cancel: threading.Event | None = None
) -> WarmUp:
    """Compiles `config`'s training calls and evaluation as its training run will (see the module
    docstring) and predicts the run's seconds; an error is recorded, not raised. Once `cancel` is set
    (the warm-up deadline passed) it stops after the compilation under way."""
    out = WarmUp(family=name)
    start = time.perf_counter()
    try:
        if cancel is not None and cancel.is_set():
            raise TimeoutError("not started before the warm-up deadline")
        plan = step_plan(config, len(data["train"]))
        lengths = call_lengths(config, plan)
        out.call_lengths = tuple(sorted(set(lengths)))
        model, state = _train_calls(config, data, mesh, lengths, out)
        if cancel is not None and cancel.is_set():
            raise TimeoutError("its training program compiled after the warm-up deadline")
        evaluate = lambda: validation.evaluate(model, state, data["val"], config, mesh)
        _, out.eval_compile_s = _timed(evaluate)
        _, out.eval_s = _timed(evaluate)
        evaluations = plan["total_steps"] // plan["eval_every_steps"] + (
            plan["total_steps"] % plan["eval_every_steps"] > 0
        )
        out.predicted_train_s = (
            PREPARE_S + sum(lengths) * out.step_s + evaluations * (out.eval_s + CHECKPOINT_S)
        )
    except Exception as e:  # a family that cannot compile is skipped, not the comparison
        out.error = f"{type(e).__name__}: {e}"
    out.seconds = time.perf_counter() - start
    return out


def warm_up_all(
    jobs: dict[str, ConfigDict],
    data: dict[str, ArraySplit],
    mesh,
    *,
    workers: int,
    deadline: float,
    announce: Callable[[str], object] = print,
) -> dict[str, WarmUp]:
    """`warm_up` for each of `jobs` (in its order, the longest compilation first), `workers` at once,
    until time.monotonic() reaches `deadline`: a family not compiled by then gets an error (a thread
    still compiling then finishes that compilation and stops)."""
    results: dict[str, WarmUp] = {}
    cancel = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="warm_up")
    futures = [pool.submit(warm_up, name, config, data, mesh, cancel) for name, config in jobs.items()]
    _SUBMITTED.extend(futures)
    try:
        remaining = max(0.0, deadline - time.monotonic())
        for future in concurrent.futures.as_completed(futures, timeout=remaining):
            result = future.result()
            results[result.family] = result
            announce(describe(result))
    except concurrent.futures.TimeoutError:
        cancel.set()  # a compilation under way runs on (XLA cannot be stopped), nothing after it
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for name in jobs:
        if name not in results:
            results[name] = WarmUp(family=name, error="not compiled before the warm-up deadline")
            announce(describe(results[name]))
    return {name: results[name] for name in jobs}


# Every warm-up submitted in this process, for `still_compiling`.
_SUBMITTED: list[concurrent.futures.Future] = []


def still_compiling() -> bool:
    """Whether a warm-up that missed its deadline is still compiling: Python would wait for it at exit
    (XLA cannot be interrupted), so the caller ends the process with os._exit once its files are out."""
    return any(not f.done() for f in _SUBMITTED)


def describe(w: WarmUp) -> str:
    """The progress line of one warm-up."""
    if not w.ok:
        return f"[warm-up] {w.family}: skipped ({w.error})"
    return (
        f"[warm-up] {w.family}: {w.seconds:.1f} s (first call {w.first_call_s:.1f} s, then "
        f"{w.step_s * 1e3:.2f} ms a step; first evaluation {w.eval_compile_s:.1f} s, then {w.eval_s:.2f} s); "
        f"training predicted {w.predicted_train_s:.0f} s"
    )
