"""The documented real-data command trains on FER2013 from ../shared (skipped when it is absent).

The CSV is the source trained on here; the JPEG tree decodes to exactly the CSV's images and labels
(test_fer2013_reader.test_real_image_tar_matches_csv), so training on it would repeat this test.
"""

import json
import os

import pytest

from configs import simple_cnn
from fer_flax.training import loop as train


@pytest.mark.slow
def test_trains_a_few_steps_on_real_fer2013(tmp_path, real_data_dir):
    config = simple_cnn.get_config("smoke")
    config.data.path = str(real_data_dir / "fer2013.csv.gz")
    config.data.cache_dir = str(tmp_path / "cache")
    config.batch_size = 128
    config.eval_batch_size = 1024
    config.num_epochs = 8 / 225  # 28,709 / 128 -> 225 steps per epoch; train 8 steps
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["final_step"] == 8
    assert summary["final_val"]["num_examples"] == 3435  # every PublicTest image, counted once
    assert summary["data_path"] == config.data.path
    with open(os.path.join(tmp_path, "run", "config.json")) as f:
        derived = json.load(f)["derived"]
    assert (derived["num_train"], derived["num_val"]) == (28709, 3435)
