"""Several train steps per host call (`config.steps_per_call = k`), and where the calls end.

`train_call` runs k steps of `steps.train_step` in one jitted program (a `lax.scan` of static length
k) and sums their metrics on the device. Its batches come from a `batch_fn(inputs, i, step)`: the i-th
of k stacked host batches (Grain) or a gather from the split on the devices (`training.device_input`).
A run compiles two programs: k steps, and one step for the rest of a window shorter than k.

`call_plan` cuts the run into calls that never cross a step at which the loop must act on the host
(log, evaluation, checkpoint, the run's end, and the step before a histogram step, whose gradients
need the state before it), so those land on exact step boundaries whatever k is: each window between
two such steps is run as calls of k steps, then single steps for its remainder. A run stopped by a
signal stops after the call under way; resumed there, it groups the rest of the window as the
uninterrupted run did, so it continues bit-identically.

On the CPU the scan is fully unrolled: XLA:CPU runs a train step inside a while loop many times slower
than the same step unrolled (benchmarks/RESULTS.md, "Device pipeline and steps per call"). GPUs and
TPUs run the rolled loop, whose static trip count needs no host round trip per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def call_plan(
    start_step: int, total_steps: int, steps_per_call: int, must_end: Callable[[int], bool]
) -> Iterator[tuple[int, int]]:
    """(last step, number of steps: `steps_per_call` or 1) of each call from step `start_step + 1` to
    `total_steps`; no call crosses `total_steps` or a step `s` with `must_end(s)`."""
    step = start_step
    while step < total_steps:
        end = step + 1
        while end < total_steps and not must_end(end):
            end += 1
        while end - step >= steps_per_call:
            step += steps_per_call
            yield step, steps_per_call
        while step < end:
            step += 1
            yield step, 1


def _averaged(metrics: dict) -> list[str]:
    """The metrics a log record averages: all of `train_step`'s but `finite` (which is counted)."""
    return [k for k in metrics if k != "finite"]


def sum_steps(metrics: dict, step_numbers: jax.Array) -> dict[str, jax.Array]:
    """The sums of a call's per-step metrics (`train_step`'s, stacked along axis 0; `step_numbers`
    are their 1-based steps): sums over the finite steps (what a log record averages), over all steps
    (its fallback when none was finite), the counts, and the first non-finite step (-1 if none) with
    its loss and gradient norm."""
    finite = metrics["finite"]
    first = jnp.argmin(finite)  # the first False; 0 when all are finite
    bad = ~finite[first]
    sums = {k: jnp.sum(jnp.where(finite, metrics[k], 0), dtype=jnp.float32) for k in _averaged(metrics)}
    sums.update({f"all_{k}": jnp.sum(metrics[k], dtype=jnp.float32) for k in _averaged(metrics)})
    sums.update(
        steps=jnp.asarray(finite.shape[0], jnp.int32),
        finite_steps=jnp.sum(finite, dtype=jnp.int32),
        first_bad_step=jnp.where(bad, step_numbers[first], -1),
        first_bad_loss=metrics["loss"][first],
        first_bad_grad_norm=metrics["grad_norm"][first],
    )
    return sums


def train_call(
    state: Any,
    inputs: dict,
    rng: jax.Array,
    teacher_variables: Any = (),
    *,
    step_fn: Callable,
    batch_fn: Callable,
    num_steps: int,
    unroll: bool = False,
) -> tuple[Any, dict]:
    """`num_steps` train steps from `state`; returns the state and the metric sums (`sum_steps`).
    `step_fn(state, batch, rng)` is `steps.train_step` with its config bound; `batch_fn(inputs, i,
    step)` gives the batch of the call's i-th step, whose 0-based step number is `step`.
    `teacher_variables` go to every step (on-the-fly distillation's teachers; () without)."""

    def one(state, i):
        new_state, metrics = step_fn(state, batch_fn(inputs, i, state.step), rng, teacher_variables)
        return new_state, (metrics, state.step + 1)

    if num_steps == 1:  # no loop to compile
        state, out = one(state, 0)
        out = jax.tree.map(lambda x: x[None], out)
    else:
        state, out = jax.lax.scan(one, state, jnp.arange(num_steps), unroll=unroll)
    return state, sum_steps(*out)


def as_sums(step: int, metrics: dict) -> dict:
    """Host-side: one step's fetched metrics (number `step`) in `sum_steps`' form."""
    finite = bool(metrics["finite"])
    sums = {k: float(metrics[k]) if finite else 0.0 for k in _averaged(metrics)}
    sums.update({f"all_{k}": float(metrics[k]) for k in _averaged(metrics)})
    sums.update(
        steps=1,
        finite_steps=int(finite),
        first_bad_step=-1 if finite else step,
        first_bad_loss=float(metrics["loss"]),
        first_bad_grad_norm=float(metrics["grad_norm"]),
    )
    return sums


def window_summary(fetched: list[dict]) -> dict[str, Any]:
    """Host-side: a log window's means over its finite steps (over all of them when none was finite),
    its step counts and its first non-finite step (-1 if none) from the sums of its calls."""
    steps = sum(int(s["steps"]) for s in fetched)
    finite = sum(int(s["finite_steps"]) for s in fetched)
    prefix = "" if finite else "all_"
    count = finite or steps
    keys = [k[len("all_") :] for k in fetched[0] if k.startswith("all_")]
    means = {k: float(np.sum([np.float64(s[prefix + k]) for s in fetched]) / count) for k in keys}
    bad = [s for s in fetched if int(s["first_bad_step"]) >= 0]
    first = bad[0] if bad else None
    return {
        "means": means,
        "steps": steps,
        "skipped": steps - finite,
        "first_bad_step": int(first["first_bad_step"]) if first else -1,
        "first_bad_loss": float(first["first_bad_loss"]) if first else None,
        "first_bad_grad_norm": float(first["first_bad_grad_norm"]) if first else None,
    }
