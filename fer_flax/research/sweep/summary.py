"""A sweep's summary, written to its workdir after every sweep (and by `--summary_only`):

  sweep.md, sweep.json   the leaderboard: each trial's state, values, objective, last evaluated
                         step and the seconds its training processes ran, best first
  best_config.py         the best finished trial's config as a ready-to-run file (its get_config()
                         loads the base config and applies the sweep's overrides and the trial's
                         values, exactly as the trial ran)
  objective.png          the objective against trial number, with the best so far
  parameters.png         the objective against each parameter's value, one panel per parameter

A pruned trial's objective is its best validation accuracy before it was stopped, marked as pruned:
it ranks after every finished trial.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from typing import Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from fer_flax.research.sweep import space as sweep_space
from fer_flax.research.sweep import storage
from fer_flax.research.sweep.trial import SWEEP_LOCK, TrialSetup, trial_dir
from fer_flax.run import lock as workdir_lock
from fer_flax.run import plots
from fer_flax.run import workdir as workdir_lib

_ORDER = {"complete": 0, "pruned": 1, "running": 2, "stopped": 3, "waiting": 4, "fail": 5, "retried": 6}


def trial_row(trial: FrozenTrial, setup: TrialSetup, retried: Collection[int] = ()) -> dict[str, Any]:
    """One leaderboard row. A trial that a retry replaced (its worker stopped) is "retried". In a
    local study an unfinished trial is "running" while a sweep holds it, else "stopped" (a rerun of
    the sweep resumes it); in a shared one it is "running" (retried if its heartbeat stops)."""
    state = "retried" if trial.number in retried else trial.state.name.lower()
    workdir = trial.user_attrs.get("workdir", os.path.basename(trial_dir(setup.root, trial.number)))
    held = workdir_lock.is_held(os.path.join(setup.root, workdir), SWEEP_LOCK)
    if setup.shared is None and trial.state == TrialState.RUNNING and not held:
        state = "stopped"
    steps = trial.intermediate_values
    objective = trial.value if trial.state == TrialState.COMPLETE else max(steps.values(), default=None)
    return {
        "trial": trial.number,
        "state": state,
        "objective": objective,
        "params": dict(trial.params),
        "last_step": max(steps, default=None),
        "evaluations": {str(k): v for k, v in sorted(steps.items())},
        "seconds": trial.user_attrs.get("seconds"),
        "workdir": workdir,
        "host": trial.user_attrs.get("host"),
        "error": trial.user_attrs.get("error"),
    }


def ranked(rows: list[dict]) -> list[dict]:
    """Finished trials by objective, then pruned ones by theirs, then running, then failed."""

    def key(row):
        objective = row["objective"]
        rank = -objective if objective is not None else math.inf
        return (_ORDER.get(row["state"], len(_ORDER)), rank, row["trial"])

    return sorted(rows, key=key)


def write(study: optuna.Study, setup: TrialSetup) -> dict[str, Any]:
    """Writes every summary file into the sweep's workdir; returns what sweep.json holds."""
    trials = study.get_trials(deepcopy=False)
    retried = storage.retried_numbers(trials)
    rows = ranked([trial_row(t, setup, retried) for t in trials])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    result = {
        "name": study.user_attrs.get("name"),
        "study": setup.shared.where() if setup.shared else os.path.join(setup.root, storage.STUDY_FILE),
        "shared": setup.shared is not None,
        "base": setup.base,
        "overrides": {k: repr(v) for k, v in setup.overrides.items()},
        "space": {k: sweep_space.describe(p) for k, p in setup.space.items()},
        "objective": "best validation accuracy (of the weights best/ holds), maximised",
        "counts": {state: sum(r["state"] == state for r in rows) for state in _ORDER},
        "best": None if best is None else {**trial_row(best, setup), "config": "best_config.py"},
        "trials": rows,
        "files": ["sweep.md", "sweep.json", "objective.png", "parameters.png"],
    }
    root = setup.root
    if best is not None:
        result["files"].insert(2, "best_config.py")
        workdir_lib.write_text(os.path.join(root, "best_config.py"), best_config_text(setup, best))
    workdir_lib.write_json(os.path.join(root, "sweep.json"), result)
    workdir_lib.write_text(os.path.join(root, "sweep.md"), markdown(result))
    plots.save(objective_figure(rows), os.path.join(root, "objective.png"))
    plots.save(parameters_figure(rows, setup.space), os.path.join(root, "parameters.png"))
    return result


def best_config_text(setup: TrialSetup, best: FrozenTrial) -> str:
    values = {k: best.params[k] for k in setup.space if k in best.params}
    folder = os.path.join(setup.root, trial_row(best, setup)["workdir"])
    if setup.shared is not None:
        folder = f"{folder} on {best.user_attrs.get('host', 'its worker')}"
    doc = (
        f"The best trial of the sweep in {setup.root}: trial {best.number}, best validation accuracy "
        f"{best.value:.4f} (its run: {folder}).\n\n{setup.base} with the sweep's overrides and the "
        f"trial's values:\n  {sweep_space.format_values(values)}\n\nRun it (from the folder the sweep "
        f"ran in; it reproduces the trial):\n  python -m fer_flax.main --config "
        f"{os.path.join(setup.root, 'best_config.py')} --workdir workdirs/best"
    )
    return sweep_space.config_file_text(setup.base, setup.overrides, values, doc)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(result: dict) -> str:
    """The leaderboard as a Markdown table, best first."""
    keys = list(result["space"])
    lines = [f"# Sweep {result['name']}: {result['base']}", ""]
    lines.append("Space: " + ", ".join(f"`{k}` {d}" for k, d in result["space"].items()))
    overrides = {k: v for k, v in result["overrides"].items() if k != "wandb.group"}
    if overrides:
        lines.append("Overrides: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items()))
    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items() if n)
    lines += [f"Trials: {counts or 'none yet'}. Objective: {result['objective']}.", ""]
    shared = result.get("shared", False)  # the trials ran on several machines: say where
    head = [
        "rank",
        "trial",
        "state",
        "objective",
        "last step",
        "seconds",
        *(["run"] if shared else []),
        *keys,
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, row in enumerate(result["trials"], 1):
        objective = "—" if row["objective"] is None else f"{row['objective']:.4f}"
        seconds = "—" if row["seconds"] is None else f"{row['seconds']:.0f}"
        cells = [rank, row["trial"], row["state"], objective, _cell(row["last_step"]), seconds]
        if shared:
            cells.append(f"{row['host']}:{row['workdir']}" if row.get("host") else "—")
        cells += [_cell(row["params"].get(k)) for k in keys]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if result["best"]:
        best = result["best"]
        lines += ["", f"Best: trial {best['trial']}, {best['objective']:.4f}; config in best_config.py."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- figures

_STYLE = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:gray")}


def objective_figure(rows: list[dict]) -> Figure:
    """Each trial's objective against its number (pruned ones at their best before the stop), and
    the best finished objective so far."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for state, (marker, color) in _STYLE.items():
        points = [(r["trial"], r["objective"]) for r in rows if r["state"] == state]
        points = [(n, v) for n, v in points if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker, color=color, linestyle="none", label=state)
    finished = sorted((r["trial"], r["objective"]) for r in rows if r["state"] == "complete")
    if finished:
        best = [max(v for _, v in finished[: i + 1]) for i in range(len(finished))]
        ax.step([n for n, _ in finished], best, where="post", color="tab:green", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("Sweep objective by trial")
    return fig


def _parameter_axis(ax, param: sweep_space.Param) -> None:
    """The x axis of a parameter's panel: its whole range (log for log ranges, plain numbers as
    ticks), or its choices in order."""
    if isinstance(param, sweep_space.Choice):
        ax.set_xticks(range(len(param.values)), [str(v) for v in param.values])
        ax.set_xlim(-0.5, len(param.values) - 0.5)
        return
    if param.log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(param.low / 1.1, param.high * 1.1)
    else:
        margin = 0.04 * (param.high - param.low)
        ax.set_xlim(param.low - margin, param.high + margin)


def parameters_figure(rows: list[dict], space: dict[str, sweep_space.Param]) -> Figure:
    """One panel per parameter: the objective against the parameter's value (log axes for log
    ranges, the choices in order for a choice)."""
    keys = list(space)
    columns = min(3, max(1, len(keys)))
    nrows = max(1, -(-len(keys) // columns))
    fig = Figure(figsize=(4.2 * columns, 3.4 * nrows), layout="constrained")
    axes = [ax for row in fig.subplots(nrows, columns, squeeze=False) for ax in row]
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    for ax, key in zip(axes, keys, strict=False):
        param = space[key]
        for state, (marker, color) in _STYLE.items():
            points = [
                (r["params"][key], r["objective"])
                for r in rows
                if r["state"] == state and r["objective"] is not None and key in r["params"]
            ]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if isinstance(param, sweep_space.Choice):
                xs = [param.values.index(x) if x in param.values else math.nan for x in xs]
            ax.plot(xs, ys, marker, color=color, linestyle="none", label=state)
        _parameter_axis(ax, param)
        ax.set_xlabel(key)
        ax.set_ylabel("best validation accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("Each parameter's effect (x: pruned, before its stop)")
    return fig
