"""Fault injection for the reliability tests, done from outside the product.

`flip_a_bit` and `largest_file` damage a checkpoint's files as bit rot would (same size, different
content).

`install(spec)` wraps public fer_flax functions (`training.loop.compile_steps`,
`inference.engine.logits_fn`) and Orbax's atomic commit (`AtomicRenameTemporaryPath.finalize`, as
Orbax's own tests patch it) in this process, so that it signals itself at one exact moment. Run as a
program, `python tests/helpers/fault_injection.py SPEC [fer_flax.main flags...]` installs it and runs
`fer_flax.main`.

SPEC is "<where>:<step>[:<signal>]", SIGKILL unless TERM or INT is given:
  step:N     right after training step N is dispatched (after the call that runs it)
  eval:N     inside the evaluation at step N, after its first batch
  save:N     inside the save of checkpoints/N, after every array is written, before Orbax commits it
  nospace:N  no signal: the commit of checkpoints/N fails with OSError(ENOSPC), as on a full disk
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sys
from pathlib import Path

WHERE = ("step", "eval", "save", "nospace")


def largest_file(folder: Path) -> Path:
    """The largest file under `folder` (in a checkpoint: array data)."""
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_a_bit(path: Path) -> None:
    """Flips one bit in the middle of `path`: same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def parse(spec: str) -> tuple[str, int, signal.Signals]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in WHERE or not parts[1].isdigit():
        raise ValueError(f"fault spec must be <{'|'.join(WHERE)}>:<step>[:TERM|INT|KILL], got {spec!r}")
    sig = signal.Signals[f"SIG{parts[2]}"] if len(parts) == 3 else signal.SIGKILL
    return parts[0], int(parts[1]), sig


def install(spec: str) -> None:
    """Patches this process so that it sends itself the signal of `spec` at the moment it names."""
    where, at_step, sig = parse(spec)
    from orbax.checkpoint._src.path import atomicity

    from fer_flax.inference import engine as inference
    from fer_flax.training import loop as train

    current = {"step": None}  # the last training step dispatched

    def fire(moment: str) -> None:
        if moment == where and current["step"] == at_step:
            os.kill(os.getpid(), sig)

    compile_steps = train.compile_steps

    def compile_counting_steps(*args, **kwargs):
        compiled = compile_steps(*args, **kwargs)

        def train_step(state, batch, rng):
            if current["step"] is None:  # the resumed step, read once
                current["step"] = int(state.step)
            out = compiled.train(state, batch, rng)
            # A call of several steps (steps_per_call > 1, the device pipeline) says how many it runs.
            before = current["step"]
            current["step"] += int(batch["num_steps"]) if "num_steps" in batch else 1
            if where == "step" and before < at_step <= current["step"]:
                os.kill(os.getpid(), sig)
            return out

        return dataclasses.replace(compiled, train=train_step)

    logits_fn = inference.logits_fn

    def logits_fn_that_may_stop(*args, **kwargs):
        fn = logits_fn(*args, **kwargs)

        def apply(variables, images):
            out = fn(variables, images)
            fire("eval")
            return out

        return apply

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_that_may_stop(self, *args, **kwargs):
        final = Path(self.get_final())
        if final.parent.name == "checkpoints" and final.name == str(at_step):
            if where == "save":
                os.kill(os.getpid(), sig)
            if where == "nospace":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get()))
        return await finalize(self, *args, **kwargs)

    train.compile_steps = compile_counting_steps
    inference.logits_fn = logits_fn_that_may_stop
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_that_may_stop


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    spec, sys.argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    install(spec)
    from fer_flax import cli

    cli.main_of("fer_flax.main")  # exactly what `python -m fer_flax.main` runs
