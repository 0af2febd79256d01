"""Records folders (ArrayRecord shards + records.json): conversion, lazy reading, and training batches
identical to the in-memory path's."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_flax.base.errors import ConfigError
from fer_flax.config import defaults
from fer_flax.core import input_pipeline
from fer_flax.data import FERDataError, labels, record_writer, records, sources, to_records
from fer_flax.data.ferplus import VoteSplit
from fer_flax.data.spec import FER2013, FERPLUS, DataSpec
from fer_flax.data.splits import SPLIT_TO_USAGE
from fer_flax.data.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train": 90, "val": 25, "test": 20}


def _csv(path: Path, bad_line: int | None = None) -> Path:
    """A FER2013 CSV of synthetic faces; `bad_line` (1-based, the header is line 1) gets a short row."""
    data = generate_synthetic(*SIZES.values(), seed=3)
    lines = ["emotion,pixels,Usage"]
    for split, part in data.items():
        for image, label in zip(part.images, part.labels, strict=True):
            lines.append(f"{label},{' '.join(map(str, image.reshape(-1)))},{SPLIT_TO_USAGE[split]}")
    if bad_line is not None:
        lines[bad_line - 1] = "1,3 4 5,Training"
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_config(path: Path | None, **keys):
    data = defaults.get_base_config().data
    data.path = None if path is None else str(path)
    for key, value in keys.items():
        data[key] = value
    return data


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(the CSV, its records folder: 3 shards a split)."""
    tmp = tmp_path_factory.mktemp("records")
    csv = _csv(tmp / "fer.csv")
    to_records.convert(_data_config(csv), tmp / "rec", shards=3, say=lambda _: None)
    return csv, tmp / "rec"


@pytest.fixture(scope="module")
def splits(converted, tmp_path_factory):
    """{"memory": the CSV's splits in memory, "records": the records folder's}."""
    csv, rec = converted
    names = tuple(SIZES)
    cache = tmp_path_factory.mktemp("cache")
    memory = sources.load_splits(_data_config(csv), names, cache_dir=str(cache), announce=lambda _: None)
    lazy = sources.load_splits(_data_config(rec), names, announce=lambda _: None)
    return {"memory": memory, "records": lazy}


def test_conversion_round_trip(converted, splits):
    _, rec = converted
    data = _data_config(rec)
    assert sources.resolve_format(data) == "records" and sources.resolve_spec(data) == FER2013
    meta = records.read_meta(rec)
    for split, n in SIZES.items():
        memory, lazy = splits["memory"][split], splits["records"][split]
        assert records.is_lazy(lazy) and not records.is_lazy(memory)
        assert len(lazy) == n and lazy.images.shape == memory.images.shape
        np.testing.assert_array_equal(lazy.images[np.arange(n)], memory.images)
        np.testing.assert_array_equal(lazy.images[5:9], memory.images[5:9])
        np.testing.assert_array_equal(lazy.labels, memory.labels)
        entry = meta["splits"][split]
        assert entry["count"] == n and entry["histogram"] == memory.class_counts().tolist()
        assert [s["count"] for s in entry["shards"]] == [n // 3 + (i < n % 3) for i in range(3)][::-1]
        assert all((rec / s["file"]).is_file() for s in entry["shards"])


def test_lazy_images_refuse_a_whole_array_and_pickle(splits):
    images = splits["records"]["train"].images
    with pytest.raises(TypeError, match="read lazily"):
        np.asarray(images)
    again = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(again[[3, 1, 4]], images[[3, 1, 4]])


def test_a_bad_row_names_the_line_and_writes_nothing(tmp_path):
    csv = _csv(tmp_path / "bad.csv", bad_line=7)
    with pytest.raises(FERDataError, match=r"bad\.csv, line 7"):
        to_records.convert(_data_config(csv), tmp_path / "out", say=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_a_failure_while_writing_names_the_image_and_writes_nothing(tmp_path):
    images = generate_synthetic(20, 0, 0)["train"].images
    good = np.zeros(10, np.int32)
    folder = record_writer.RecordsFolder(tmp_path / "out", FER2013, source="faces", shards=2, say=print)
    with pytest.raises(FERDataError, match=r"train image 13: label \[9\] is out of range 0\.\.6"), folder:
        w = folder.split("train", 20)
        w.write(images[:10], good)
        w.write(images[10:], np.array([0, 1, 2, 9, 0, 0, 0, 0, 0, 0]))
    assert list(tmp_path.iterdir()) == []
    folder = record_writer.RecordsFolder(tmp_path / "out", FER2013)
    with pytest.raises(FERDataError, match=r"expected uint8 \[48, 48\]"), folder:
        folder.split("train", 3).write(np.zeros((3, 32, 32), np.uint8), np.zeros(3, np.int32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sampling", ["none", "balanced"])
@pytest.mark.parametrize("process_count", [1, 2])
def test_training_batches_equal_the_in_memory_batches(splits, sampling, process_count):
    streams = {
        name: [
            input_pipeline.make_train_iterator(
                data["train"],
                global_batch_size=16,
                seed=7,
                sampling=sampling,
                process_index=p,
                process_count=process_count,
                num_threads=0,
            )
            for p in range(process_count)
        ]
        for name, data in splits.items()
    }
    for _ in range(8):  # 128 positions: past the first epoch of 90
        for p in range(process_count):
            memory, lazy = next(streams["memory"][p]), next(streams["records"][p])
            assert set(memory) == set(lazy) == {"image", "label"}
            for key in memory:
                np.testing.assert_array_equal(lazy[key], memory[key])
                assert lazy[key].dtype == memory[key].dtype


def test_resume_mid_epoch_from_the_iterator_state(splits):
    def stream():
        return input_pipeline.make_train_iterator(
            splits["records"]["train"], global_batch_size=8, seed=1, num_threads=0
        )

    first = stream()
    for _ in range(5):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(4)]
    resumed = stream()
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])


def test_process_slices_read_disjoint_parts_that_cover_the_batch(splits, monkeypatch):
    lazy = splits["records"]["train"]
    read: list[list[int]] = []
    source = lazy.images._source

    class Counting:
        def __len__(self):
            return len(source)

        def __getitems__(self, keys):
            read.append(list(keys))
            return source.__getitems__(keys)

    monkeypatch.setattr(lazy.images, "_source", Counting())
    whole = next(input_pipeline.make_train_iterator(lazy, global_batch_size=12, seed=2, num_threads=0))
    parts = []
    for p in range(3):
        it = input_pipeline.make_train_iterator(
            lazy, global_batch_size=12, seed=2, process_index=p, process_count=3, num_threads=0
        )
        parts.append(next(it))
    keys = read[1:]  # one read per process, 4 records each
    every = [k for part in keys for k in part]
    assert [len(k) for k in keys] == [4, 4, 4] and sorted(every) == sorted(read[0])
    assert len(set(every)) == 12  # disjoint: one epoch's distinct positions
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in parts]), whole["image"])
    # Exact evaluation: every example exactly once over the processes, in order.
    seen = []
    for p in range(3):
        for batch in input_pipeline.eval_batches(
            lazy, global_batch_size=12, process_index=p, process_count=3
        ):
            seen.append(batch["label"][batch["mask"]])
    assert sum(len(s) for s in seen) == len(lazy)


def test_eval_batches_equal_the_in_memory_batches(splits):
    memory = list(input_pipeline.eval_batches(splits["memory"]["val"], global_batch_size=8))
    lazy = list(input_pipeline.eval_batches(splits["records"]["val"], global_batch_size=8))
    assert len(memory) == len(lazy) == 4
    for m, r in zip(memory, lazy, strict=True):
        for key in m:
            np.testing.assert_array_equal(r[key], m[key])


def test_votes_keep_the_ferplus_label_modes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 48, 48), dtype=np.uint8)
    votes = rng.integers(0, 6, (30, 10)).astype(np.int32)
    votes[::7, 9] = 20  # "not a face": dropped
    with record_writer.RecordsFolder(
        tmp_path / "rec", FERPLUS, kind="votes", shards=4, say=lambda _: None
    ) as f:
        f.split("train", 30).write(images, votes)
    data = _data_config(tmp_path / "rec", label_mode="crossentropy")
    assert sources.resolve_spec(data) == FERPLUS
    lazy = sources.load_splits(data, ("train",), announce=lambda _: None)["train"]
    want = labels.label_split(VoteSplit(images=images, votes=votes), "crossentropy")
    assert len(lazy) == len(want) < 30
    np.testing.assert_array_equal(lazy.images[np.arange(len(lazy))], want.images)
    np.testing.assert_array_equal(lazy.labels, want.labels)
    np.testing.assert_array_equal(lazy.targets, want.targets)


def test_rgb_records_read_back_as_written(tmp_path):
    spec = DataSpec(("a", "b", "c"), (20, 24), 3)
    images = np.random.default_rng(1).integers(0, 256, (11, 20, 24, 3), dtype=np.uint8)
    with record_writer.RecordsFolder(tmp_path / "rec", spec, records_per_shard=4, say=lambda _: None) as f:
        f.split("train", 11).write(images, np.arange(11) % 3)
    split = records.load_splits(tmp_path / "rec", ("train",))["train"]
    assert len(records.read_meta(tmp_path / "rec")["splits"]["train"]["shards"]) == 3
    np.testing.assert_array_equal(split.images[np.arange(11)[::-1]], images[::-1])
    assert split.image_shape == (20, 24, 3) and split.class_counts().tolist() == [4, 4, 3]


def test_config_errors(tmp_path, converted):
    from fer_flax.training import feed

    _, rec = converted
    with pytest.raises(ConfigError, match=r"config\.data\.format='records'"):
        sources.resolve_format(_data_config(tmp_path, format="records"))
    with pytest.raises(ConfigError, match=r"config\.data\.label_mode='crossentropy'"):
        sources.load_splits(_data_config(rec, label_mode="crossentropy"), ("val",), announce=print)
    with pytest.raises(FERDataError, match="has no 'train' split"):
        records.load_splits(_empty_records(tmp_path), ("train",))
    config = defaults.get_base_config()
    config.data.path, config.data.pipeline = str(rec), "device"
    lazy = records.load_splits(rec, ("val",))["val"]
    with pytest.raises(ConfigError, match=r"config\.data\.pipeline='device'"):
        feed.make_feed(config, lazy, mesh=None)


def _empty_records(tmp_path: Path) -> Path:
    with record_writer.RecordsFolder(tmp_path / "empty", FER2013, say=lambda _: None) as f:
        f.split("val", 2).write(np.zeros((2, 48, 48), np.uint8), np.zeros(2, np.int32))
    return tmp_path / "empty"


def test_the_convert_command(converted, tmp_path):
    csv, _ = converted
    out = tmp_path / "cmd"
    args = ["--source", str(csv), "--out", str(out), "--splits=train,val", "--records_per_shard=40"]
    run = subprocess.run(
        [sys.executable, "-m", "fer_flax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "train: 90/90 records" in run.stdout and "train 90 in 3 shard(s)" in run.stdout
    again = subprocess.run(
        [sys.executable, "-m", "fer_flax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "already exists" in again.stderr + again.stdout


def test_ferplus_folders_and_tars_convert_with_their_votes(tmp_path):
    from tests.helpers.ferplus import face, make_tar, write_split

    rows = [
        ("fer0000000.png", [0, 8, 0, 0, 0, 0, 0, 2, 0, 0], face(0)),
        ("fer0000001.png", [6, 0, 0, 0, 0, 0, 0, 4, 0, 0], face(1)),
        ("fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8], face(2)),  # not a face: dropped
    ]
    write_split(tmp_path / "fp", "train", rows)
    write_split(tmp_path / "fp", "val", [("fer0000009.png", [0, 0, 9, 1, 0, 0, 0, 0, 0, 0], face(9))])
    for i, source in enumerate((tmp_path / "fp", make_tar(tmp_path / "fp", tmp_path / "fp.tar.gz"))):
        out = tmp_path / f"rec{i}"
        meta = to_records.convert(_data_config(source), out, ("train", "val"), say=lambda _: None)
        assert meta["kind"] == "votes" and meta["splits"]["train"]["histogram"][9] == 1
        memory = sources.load_splits(
            _data_config(source, label_mode="multi_target"), ("train", "val"), cache_dir=str(tmp_path / "c")
        )
        lazy = sources.load_splits(_data_config(out, label_mode="multi_target"), ("train", "val"))
        for split in ("train", "val"):
            np.testing.assert_array_equal(
                lazy[split].images[np.arange(len(lazy[split]))], memory[split].images
            )
            np.testing.assert_array_equal(lazy[split].labels, memory[split].labels)
            np.testing.assert_array_equal(lazy[split].targets, memory[split].targets)


def test_a_damaged_records_folder_names_the_file(converted, tmp_path):
    import shutil

    _, rec = converted
    broken = tmp_path / "broken"
    shutil.copytree(rec, broken)
    np.save(broken / "val.labels.npy", np.zeros(3, np.int32))
    with pytest.raises(FERDataError, match=r"val\.labels\.npy: 3 int32 rows for 25 records"):
        records.load_splits(broken, ("val",))
    (broken / "records.json").write_text("{")
    with pytest.raises(FERDataError, match=r"records\.json: cannot read the records description"):
        sources.resolve_spec(_data_config(broken))


def test_distillation_keys_records_by_their_description(splits):
    from types import SimpleNamespace

    from fer_flax.training import distill

    config = defaults.get_base_config()
    teacher = SimpleNamespace(
        restored=SimpleNamespace(config=config, variables={"w": np.ones(3, np.float32)}),
        tta_mode="none",
        crop_size=None,
    )
    lazy = splits["records"]["train"]
    key = distill._digest(teacher, 2.0, lazy)  # would raise if it converted the images to one array
    assert key == distill._digest(teacher, 2.0, lazy) != distill._digest(teacher, 3.0, lazy)
    assert distill._digest(teacher, 2.0, splits["memory"]["train"]) != key
