"""Search space over the CPU recipe (configs/cpu_recipe.py): learning rate, weight decay, label
smoothing and augmentation strength.

Command (real FER2013; trials are selected and pruned on PublicTest, the `val` split):
  python -m fer_flax.sweep --config configs/cpu_recipe.py --space sweeps/cpu_recipe.py --trials 8 \
      --workdir workdirs/sweep_cpu --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Each trial is a whole CPU-recipe run; to fit a budget, shorten every trial with an override such as
`--config.num_epochs=10 --config.eval_every_epochs=2` (more evaluations also give the pruner more
points) and adopt what wins with a full-length run of the printed best_config.py. The ranges are
centred on the recipe's values (lr 0.1, weight decay 5e-4, label smoothing 0.1, pad-crop 4, ±10°).
"""

from fer_flax.research.sweep.space import choice, loguniform, uniform

SPACE = {
    "optim.lr": loguniform(0.03, 0.3),
    "optim.weight_decay": loguniform(1e-4, 2e-3),
    "label_smoothing": uniform(0.0, 0.2),
    "augment.pad_crop": choice(0, 2, 4, 6),
    "augment.rotate_degrees": choice(0, 5, 10, 15),
}
