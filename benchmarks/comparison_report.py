"""The last phase of `benchmarks.model_comparison`: the comparison report of the trained families, their
ensemble and the pack of their best weights, each recorded in the summary.

All three read the runs' best checkpoints with flip TTA, the TTA the `:gpu` configs evaluate with in
training, so the evaluation programs compiled then serve again here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from benchmarks import comparison_outputs as outputs
from fer_flax.inference import engine
from fer_flax.inference import evaluate as evaluate_lib
from fer_flax.research import compare as compare_lib

TTA = "flip"
ENSEMBLE_TARGET = 0.75  # PublicTest of the ensemble of the five


def record_evaluations(summary: dict, names: list[str], result: dict) -> None:
    """The report's evaluation of each run (its best checkpoint on PublicTest) into the summary."""
    for name, run in zip(names, result["runs"], strict=True):
        ev, entry = run["evaluation"], summary["families"][name]
        entry.update(
            accuracy=ev["accuracy"],
            balanced_accuracy=ev["balanced_accuracy"],
            macro_f1=ev["macro_f1"],
            best_step=ev["checkpoint_step"],
            weights=ev["weights"],
            num_params=run["num_params"],
            gflops_per_image=ev["gflops_per_image"],
        )
        target = entry.get("target")
        entry["target_met"] = None if target is None else ev["accuracy"] >= target


def ensemble(summary: dict, members: list, split, mesh, say: Callable[[str], None]) -> None:
    """The members' mean class probabilities scored on `split` (`inference.evaluate`'s ensemble path)."""
    report = evaluate_lib.evaluate_split(
        members, split, batch_size=members[0].config.eval_batch_size, tta_mode=TTA, mesh=mesh
    )
    result = {k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece")}
    result["members"] = [f"{m.config.model_name}/{m.config.model.variant}" for m in members]
    result["verdict"] = "met" if report["accuracy"] >= ENSEMBLE_TARGET else "missed"
    summary["ensemble"] = result
    say(
        f"ensemble of {len(members)}: PublicTest {report['accuracy']:.4f} "
        f"(target {ENSEMBLE_TARGET:.2f}: {result['verdict']})"
    )


def pack(
    summary: dict, out: str, max_out_bytes: int, names: list[str], members: list, split, mesh, say
) -> None:
    """weights.npz within what `out` has left of `max_out_bytes`, best family first, each family
    re-scored on `split` from the pack."""
    used, _ = outputs.folder_bytes(out)
    budget = max_out_bytes - used
    accuracy = {n: summary["families"][n].get("accuracy") or 0.0 for n in names}
    order = sorted(range(len(names)), key=lambda i: -accuracy[names[i]])
    families = {
        names[i]: {
            "variables": members[i].variables,
            "accuracy": accuracy[names[i]],
            "model": f"{members[i].config.model_name}/{members[i].config.model.variant}",
            "checkpoint_step": members[i].step,
            "weights": members[i].weights,
            "config": members[i].config.to_dict(),
        }
        for i in order
    }
    path = os.path.join(out, "weights.npz")
    if os.path.exists(path):
        os.remove(path)  # an earlier run's pack is not this one's
    manifest = outputs.write_pack(path, families, budget)
    packed = outputs.load_pack(path) if os.path.exists(path) else {}
    for i in order:
        name, member = names[i], members[i]
        manifest[name].pop("config")
        if name in packed:
            logits = engine.predict_logits(
                member.model,
                packed[name]["variables"],
                split,
                batch_size=member.config.eval_batch_size,
                mesh=mesh,
                tta_mode=TTA,
                crop_size=member.config.augment.crop_size,
            )
            manifest[name]["packed_accuracy"] = engine.split_metrics(logits, split.labels)["accuracy"]
    size = os.path.getsize(path) if os.path.exists(path) else 0
    summary["pack"] = {"file": "weights.npz", "bytes": size, "budget_bytes": budget, "families": manifest}
    say(
        f"packed {len(packed)} of {len(names)} families: {size / 2**20:.2f} MiB (budget {budget / 2**20:.2f})"
    )


def report_all(
    summary: dict,
    *,
    out: str,
    runs_dir: str,
    data_path: str | None,
    max_out_bytes: int,
    mesh,
    log,
    say: Callable[[str], None],
) -> None:
    """The report, the ensemble and the pack of the families with a best checkpoint (`has_best`), in
    that order, each with its seconds and what JAX compiled for it (`log`, a
    `comparison_warmup.CompileLog`); a step that fails is noted in the summary and the next one still
    runs."""
    names = [n for n, f in summary["families"].items() if f.get("has_best")]
    if not names:
        summary["notes"].append("No family has a best checkpoint: no report, ensemble or pack.")
        return
    workdirs = [os.path.join(runs_dir, n) for n in names]
    say(f"== report of {', '.join(names)}")
    members, split = None, None
    for step in ("report", "ensemble", "pack"):
        start, mark = time.monotonic(), log.mark()
        try:
            if step == "report":
                result = compare_lib.compare(workdirs, data_path=data_path, tta_mode=TTA, announce=say)
                compare_lib.write_report(result, out)
                record_evaluations(summary, names, result)
            elif step == "ensemble":
                members = engine.load_members(workdirs, "best", mesh=mesh)
                split, _ = evaluate_lib.load_eval_split(members, "val", data_path, announce=say)
                ensemble(summary, members, split, mesh, say)
            elif members is not None:
                pack(summary, out, max_out_bytes, names, members, split, mesh, say)
        except Exception as e:  # the summary says what failed; the other steps still run
            summary["notes"].append(f"The {step} failed: {type(e).__name__}: {e}")
            say(summary["notes"][-1])
        summary["phases"][step] = round(time.monotonic() - start, 1)
        summary["compiled"][step] = log.since(mark)
