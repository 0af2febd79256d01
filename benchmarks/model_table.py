"""The model-zoo table: parameters, forward GFLOPs per image (XLA's cost analysis) and training
images/s on this machine's CPU for every variant of every family; written into README.md.

  python -m benchmarks.model_table                      # measure everything, rewrite the README table
  python -m benchmarks.model_table --families cnn,vit --no_readme
  python -m benchmarks.model_table --no_train           # parameters and GFLOPs only (fast)
  python -m benchmarks.model_table --only beefy/cpu,vit/vit_cpu   # these rows; the others stay as they are

Training images/s is the real train step (augmentation, loss, optimizer update) at `--batch` in
float32, averaged over `--steps` timed steps after compilation and two warm-up steps; regenerate the table
whenever a model changes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time

import jax
import jax.numpy as jnp

from benchmarks.train_throughput import measure_train
from fer_flax import models, runtime
from fer_flax.core import parallel

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def forward_gflops(family: str, variant: str) -> tuple[int, float]:
    """(parameter count, forward GFLOPs for one 48x48 image in eval mode)."""
    model = models.create_model(family, variant=variant)
    x = jnp.zeros((1, 48, 48, 1), jnp.float32)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
    num_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of dicts in older jax
    return num_params, float(cost["flops"]) / 1e9


def _readme_rows() -> dict[tuple[str, str], str]:
    """The README table's rows, by (family, variant)."""
    with open(README) as f:
        text = f.read()
    rows = re.findall(r"^\| (\w+) \| `(\w+)` \|.*$", text.split(START)[-1].split(END)[0], flags=re.M)
    lines = re.findall(r"^\| \w+ \| `\w+` \|.*$", text.split(START)[-1].split(END)[0], flags=re.M)
    return {tuple(key): line for key, line in zip(rows, lines, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(models.FAMILIES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no_train", action="store_true", help="skip the images/s measurement")
    parser.add_argument("--no_readme", action="store_true", help="print only; leave README.md alone")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--only", default="", help="family/variant,...: measure these rows and keep the README's other rows"
    )
    args = parser.parse_args()
    only = {tuple(item.split("/", 1)) for item in args.only.split(",") if item}
    for family, variant in only:
        if variant not in models.variants(family):
            raise SystemExit(f"--only: {family}/{variant} is not a variant of {family!r}")
    runtime.start()  # before JAX starts

    mesh = parallel.make_mesh(jax.devices()[:1])
    rows = []
    for family in args.families.split(","):
        for variant in models.variants(family):
            if only and (family, variant) not in only:
                continue
            t0 = time.perf_counter()
            params, gflops = forward_gflops(family, variant)
            row = {"family": family, "variant": variant, "params": params, "gflops": gflops}
            if not args.no_train:
                row["images_per_s"] = measure_train(family, variant, "float32", args.batch, args.steps, mesh)[
                    "images_per_s"
                ]
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
    lines = [
        "| family | variant | parameters | forward GFLOPs/image | "
        f"train images/s (CPU, batch {args.batch}) |",
        "|---|---|---:|---:|---:|",
    ]
    measured = {}
    for r in rows:
        ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "—"
        line = f"| {r['family']} | `{r['variant']}` | {r['params'] / 1e6:.2f}M | {r['gflops']:.3f} | {ips} |"
        measured[r["family"], r["variant"]] = line
    kept = _readme_rows() if only else {}
    for family in models.FAMILIES:
        for variant in models.variants(family):
            line = measured.get((family, variant)) or kept.get((family, variant))
            if line:
                lines.append(line)
    lines.append("")
    lines.append(f"Generated by `python -m benchmarks.model_table` ({machine}, float32, one device).")
    table = "\n".join(lines)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if not args.no_readme:
        with open(README) as f:
            text = f.read()
        if START not in text:
            raise SystemExit(f"{README} has no {START} ... {END} markers")
        pattern = re.escape(START) + ".*?" + re.escape(END)
        text = re.sub(pattern, lambda _: f"{START}\n{table}\n{END}", text, flags=re.S)
        with open(README, "w") as f:
            f.write(text)
        print(f"\nwrote the table into {README}")


if __name__ == "__main__":
    main()
