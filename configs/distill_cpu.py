"""The CPU recipe's student distilled from finished runs: cnn/cpu_fast trained against the
temperature-softened probabilities of its teachers (typically the CPU recipe's seeds, an ensemble).

Commands (real FER2013; selects and reports on PublicTest, the `val` split). First the teachers, the
CPU recipe over three seeds (about 21 minutes each on 2 CPU cores), then the student:
  python -m fer_flax.multiseed --config configs/cpu_recipe.py --seeds 0,1,2 \
      --workdir workdirs/cpu_seeds --config.data.path=../shared/data/fer2013/fer2013.csv.gz
  python -m fer_flax.main --config configs/distill_cpu.py --workdir workdirs/distill_cpu \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz \
      --config.distill.teachers="('workdirs/cpu_seeds/seed_0','workdirs/cpu_seeds/seed_1','workdirs/cpu_seeds/seed_2')"

Without teachers this config trains the plain student (the CPU recipe for 30 epochs).

Result with the three seeds as teachers (PublicTest 0.6664, 0.6672, 0.6687; their ensemble 0.6731):
PublicTest 0.6678, flip TTA. `tuned` with the strongest teachers so far (a GPU-trained ResNet-18 and
both configs/cpu_teacher.py nets; their ensemble 0.7019, JPEG data): 0.6844 in 29.7 minutes of
training; with five GPU-trained teachers (ensemble 0.7083): 0.6827 (seed 0) and 0.6920 (seed 1, 27.8
minutes of training). Curves, timings and commands in benchmarks/RESULTS.md ("Seeds, ensemble and a distilled
student of the CPU recipe", "Stronger teachers").

Why these choices (docs/distillation.md):
- The CPU recipe's model, optimiser, augmentation, EMA and flip TTA (configs/cpu_recipe.py), so the
  student differs from a teacher only in what it learns from and how long.
- Cached distillation: the teachers' probabilities of every training image are computed once before
  training (flip views, each teacher's own eval_tta) and reused by reruns, and a step then costs what
  a plain step does; on the fly the student would pay three teachers' forward passes per step
  (benchmarks/RESULTS.md, "Distillation modes").
- 30 epochs: 6/5 of the CPU recipe's training time, plus a minute or two for the teachers' one-off
  inference (measured times in benchmarks/RESULTS.md).
- alpha 0.3, T 2: an ensemble of the seeds is more accurate than any one of them, so most of the
  weight goes to its probabilities; the teachers were trained with label smoothing, which already
  softens their outputs, so a low temperature keeps their class ranking visible (at T 4 the seven
  probabilities come close to uniform).
- `tuned`: the tuned recipe's values, 35 epochs (what fits 30 minutes of training on 2 cores: 29.7
  measured) and alpha 0.1: with teachers three points above the student, their probabilities are
  worth more than the noisy labels, but not all (0.6844 against 0.6815 at alpha 0.3 and 0.6798 at 0,
  same teachers and epochs; one seed each, inside the student's seed spread of about a point).
"""

from configs import cpu_recipe
from configs.common import check_arg, use_smoke_settings


def get_config(arg: str = ""):
    """'' is the student (teachers from --config.distill.teachers); 'tuned' the same student with the
    tuned recipe's values (`configs/cpu_recipe.py:tuned`), 35 epochs and alpha 0.1; 'smoke' a few
    steps of it on synthetic data (tests)."""
    check_arg(arg, ("", "tuned", "smoke"))
    c = cpu_recipe.get_config("tuned" if arg == "tuned" else "")
    c.num_epochs = 35.0 if arg == "tuned" else 30.0
    c.eval_every_epochs = 5.0
    c.distill.mode = "cached"
    c.distill.alpha = 0.1 if arg == "tuned" else 0.3
    c.distill.temperature = 2.0
    if arg == "smoke":
        use_smoke_settings(c)
    return c
