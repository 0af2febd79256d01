"""Class imbalance on real FER2013: weighted sampling vs class-weighted loss vs logit adjustment.

  python benchmarks/compare_imbalance.py --data ../shared/data/fer2013/fer2013.csv.gz \
      [--epochs 5] [--seed 0] [--methods none,balanced_sampling,inverse_weights,logit_adjustment] \
      [--workdir workdirs/imbalance] [--json out.json]

Every method trains the CPU recipe (configs/cpu_recipe.py: cnn/cpu, SGD-Nesterov, cosine) for the same
number of epochs from the same seed, changing only how the imbalance is handled; FER2013's training split
has 436 disgust faces against 7,215 happy ones. Reported on PublicTest (the `val` split, flip TTA as in
the recipe): accuracy, balanced accuracy (mean per-class recall), macro-F1 and the recall of disgust,
the rarest class. Runs resume from their workdirs, so an interrupted comparison continues.

Methods (each is a config change any run can make):
  none                no correction
  balanced_sampling   data.sampling=balanced (each class drawn equally often, with replacement)
  sqrt_sampling       data.sampling=sqrt (frequencies proportional to sqrt(n_c))
  inverse_weights     loss.class_weighting=inverse
  sqrt_weights        loss.class_weighting=sqrt_inverse
  logit_adjustment    loss.logit_adjustment_tau=1.0 (Menon et al. 2021)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_flax import runtime

METHODS = {
    "none": {},
    "balanced_sampling": {"data.sampling": "balanced"},
    "sqrt_sampling": {"data.sampling": "sqrt"},
    "inverse_weights": {"loss.class_weighting": "inverse"},
    "sqrt_weights": {"loss.class_weighting": "sqrt_inverse"},
    "logit_adjustment": {"loss.logit_adjustment_tau": 1.0},
}


def config_for(method: str, data: str, epochs: float, seed: int):
    from configs.cpu_recipe import get_config

    c = get_config()
    c.data.path = data
    c.num_epochs = epochs
    c.seed = seed
    c.eval_every_epochs = epochs  # one evaluation, at the end: the comparison is of final models
    c.ema.decay = 0.0  # the final cosine epochs at a tiny rate already average; one set of weights
    c.progress_bar = False
    c.wandb.mode = "disabled"
    c.update_from_flattened_dict(METHODS[method])
    return c


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="FER2013 CSV / image folder / tar")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="none,balanced_sampling,inverse_weights,logit_adjustment")
    parser.add_argument("--workdir", default="workdirs/imbalance")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")

    first = config_for(methods[0], args.data, args.epochs, args.seed)
    runtime.start(first)  # before JAX starts: CPU settings, one CPU device per core
    from fer_flax.training import loop as train

    rows = []
    for method in methods:
        config = config_for(method, args.data, args.epochs, args.seed)
        t0 = time.time()
        summary = train.train_and_evaluate(config, os.path.join(args.workdir, method))
        val = summary["final_val"]
        rows.append(
            {
                "method": method,
                "changes": METHODS[method],
                "accuracy": val["accuracy"],
                "balanced_accuracy": val["balanced_accuracy"],
                "macro_f1": val["macro_f1"],
                "disgust_recall": val["recall/disgust"],
                "recalls": {k.split("/", 1)[1]: v for k, v in val.items() if k.startswith("recall/")},
                "wall_s": time.time() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"epochs": args.epochs, "seed": args.seed, "rows": rows}, f, indent=2)

    print(f"\n{args.epochs:g} epochs of configs/cpu_recipe.py, seed {args.seed}; PublicTest, flip TTA")
    print(f"{'method':<20} {'accuracy':>9} {'balanced':>9} {'macro-F1':>9} {'disgust R':>10} {'wall':>7}")
    for r in rows:
        print(
            f"{r['method']:<20} {r['accuracy']:>9.4f} {r['balanced_accuracy']:>9.4f} {r['macro_f1']:>9.4f} "
            f"{r['disgust_recall']:>10.4f} {r['wall_s']:>6.0f}s"
        )


if __name__ == "__main__":
    main()
