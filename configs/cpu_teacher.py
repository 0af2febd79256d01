"""A stronger CPU teacher for configs/distill_cpu.py: the tuned CPU recipe with a second convolution in
the 12x12 and 6x6 stages, trained for longer.

Command (real FER2013; selects and reports on PublicTest, the `val` split):
  python -m fer_flax.main --config configs/cpu_teacher.py --workdir workdirs/cpu_teacher \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Results (JPEG tarball data, 2 cores): '' PublicTest 0.6812 (EMA, epoch 30) in about 56 min; `wide`
0.6838 (raw, epoch 25) in about 42 min; the two with a GPU-trained ResNet-18 as an ensemble of three,
0.7019 (benchmarks/RESULTS.md, "Stronger teachers").

Why these choices:
- cnn/cpu_fast with convs_per_stage (1, 1, 2, 2): 1.72M parameters. The recipe's net underfits in its
  time budget; the extra convolutions add capacity where the maps are small, at 1.7 times the cost
  of a step (not four times, as doubling every stage's width would).
- `wide`: the other way to spend about the same: every stage 1.5 times as wide (48/96/192/384, 1.76M
  parameters, 1.8 times the recipe's step), for 25 epochs. A teacher of another shape makes other
  mistakes, which is what an ensemble of teachers needs.
- The sweep's values (`configs/cpu_recipe.py:tuned`) and more epochs: a teacher's training time is not
  part of the student's budget, so it is spent on accuracy.
"""

from configs import cpu_recipe
from configs.common import check_arg, use_smoke_settings


def get_config(arg: str = ""):
    """'' is the teacher; 'wide' the wider one; 'smoke' a few steps of the first on synthetic data
    (tests)."""
    check_arg(arg, ("", "wide", "smoke"))
    c = cpu_recipe.get_config("tuned")
    if arg == "wide":
        c.model.stage_widths = (48, 96, 192, 384)
        c.num_epochs = 25.0
        c.eval_every_epochs = 5.0
    else:
        c.model.convs_per_stage = (1, 1, 2, 2)
        c.num_epochs = 36.0
        c.eval_every_epochs = 6.0
    if arg == "smoke":
        use_smoke_settings(c)
    return c
