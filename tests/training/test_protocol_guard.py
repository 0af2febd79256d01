"""Protocol guard: training (fresh, and resumed) never requests, reads or parses the `test` split.

The CSV's PrivateTest rows are deliberately malformed, so a reader that parsed them would raise;
every data entry point on the way (load_splits as train.py sees it, the cached loader, the CSV reader,
the synthetic generator) records what it is asked for.
"""

import numpy as np
import pytest

import fer_flax.data
import fer_flax.data.cache
import fer_flax.data.fer2013
import fer_flax.data.synthetic
from configs import simple_cnn
from fer_flax.data import FERDataError
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.training import loop as train
from tests.helpers.trained_runs import write_fer_csv


@pytest.fixture
def trap_csv(tmp_path):
    """Training and PublicTest rows of real format; PrivateTest rows whose pixels cannot be parsed."""
    faces = generate_synthetic(64, 32, 0, seed=3)
    rows = [
        (int(y), x, "Training") for x, y in zip(faces["train"].images, faces["train"].labels, strict=True)
    ]
    rows += [(int(y), x, "PublicTest") for x, y in zip(faces["val"].images, faces["val"].labels, strict=True)]
    rows += [(3, "not pixels at all", "PrivateTest"), (9, "0 0 0", "PrivateTest")]
    path = tmp_path / "fer2013_trap.csv"
    write_fer_csv(path, rows)
    # The trap works: asking for test fails loudly.
    with pytest.raises(FERDataError, match="line 98"):
        fer_flax.data.fer2013.read_fer2013(path, ["test"])
    return path


def _recording(monkeypatch, module, name, calls, splits_of):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((f"{module.__name__}.{name}", splits_of(*args, **kwargs)))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_training_never_reads_the_test_split(trap_csv, tmp_path, monkeypatch):
    calls = []
    by_arg = lambda _src, splits, *a, **k: tuple(splits)
    for module in (train, fer_flax.data):  # train.py holds its own reference to load_splits
        _recording(monkeypatch, module, "load_splits", calls, by_arg)
    _recording(monkeypatch, fer_flax.data.cache, "load_fer2013_cached", calls, by_arg)
    _recording(monkeypatch, fer_flax.data.fer2013, "read_fer2013", calls, by_arg)
    _recording(
        monkeypatch,
        fer_flax.data.synthetic,
        "generate_synthetic",
        calls,
        lambda n_train, n_val, n_test, **k: ("train", "val", "test") if n_test else ("train", "val"),
    )

    config = simple_cnn.get_config("smoke")
    config.data.path = str(trap_csv)
    config.data.cache_dir = str(tmp_path / "cache")
    config.batch_size = config.eval_batch_size = 32
    config.num_epochs = 1.0  # 64 rows / 32 = 2 steps
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)  # a fresh run: parses train and val
    train.train_and_evaluate(config, workdir)  # the same command again: resumes the finished run

    assert calls, "no data entry point was called: the recording hooks are not in the training path"
    assert ("fer_flax.data.fer2013.read_fer2013", ("train", "val")) in calls
    assert not [c for c in calls if "test" in c[1]], calls


def test_trap_rows_are_not_needed_to_count_examples(trap_csv):
    # The reader still checks every row's shape and Usage, but parses only the requested splits.
    splits = fer_flax.data.fer2013.read_fer2013(trap_csv, ["train", "val"])
    assert (len(splits["train"]), len(splits["val"])) == (64, 32)
    assert np.all(splits["val"].labels < 7)
