"""Property-based tests: FER2013 sources corrupted at random are either read or rejected cleanly.

Whatever is done to a small valid CSV (plain or gzip), image folder or tar archive, reading it through
the cache either returns well-formed splits or raises `FERDataError` naming the file (and the line of
a CSV, or the image) — never another exception type — and a failed read leaves no file in the cache.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fer_flax.data.cache import load_fer2013_cached
from fer_flax.data.splits import IMAGE_SIZE, FERDataError

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
SPLIT_CHOICES = st.sampled_from([("train",), ("val",), ("test",), ("train", "val"), ("train", "val", "test")])
# CSV problems that concern the whole file rather than one line.
FILE_LEVEL_PROBLEMS = ("no rows with Usage", "cannot read the file (", "zip archives")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


def _valid_csv() -> bytes:
    rows = [(0, "Training"), (3, "Training"), (6, "PublicTest"), (2, "PrivateTest"), (5, "Training")]
    lines = ["emotion,pixels,Usage"]
    for i, (label, usage) in enumerate(rows):
        lines.append(f"{label},{' '.join(map(str, _image(i).ravel().tolist()))},{usage}")
    return ("\n".join(lines) + "\n").encode()


VALID_CSV = _valid_csv()

# One corruption: (kind, position as a fraction of the data, a byte value / count). Positions are
# drawn as integers: hypothesis favours the ends of a float range, which would mostly hit the header.
CORRUPTION = st.tuples(
    st.sampled_from(["flip", "truncate", "delete_line", "double_comma", "insert", "zero_run"]),
    st.integers(0, 9999).map(lambda i: i / 10000),
    st.integers(0, 255),
)


def _corrupt(data: bytes, ops: list[tuple[str, float, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in ops:
        if not buf:
            break
        at = int(where * len(buf))
        if kind == "flip":
            buf[at] = value
        elif kind == "truncate":
            del buf[at:]
        elif kind == "delete_line":
            lines = bytes(buf).split(b"\n")
            del lines[int(where * len(lines))]
            buf = bytearray(b"\n".join(lines))
        elif kind == "double_comma":
            commas = [i for i, b in enumerate(buf) if b == ord(",")]
            if commas:
                buf[commas[int(where * len(commas))] : commas[int(where * len(commas))] + 1] = b",,"
        elif kind == "insert":
            buf[at:at] = bytes([value]) * (1 + value % 5)
        else:  # zero_run
            buf[at : at + 1 + value] = bytes(len(buf[at : at + 1 + value]))
    return bytes(buf)


def _check(source: Path, splits: tuple[str, ...], cache_dir: Path, *, csv: bool) -> None:
    try:
        out = load_fer2013_cached(source, splits, cache_dir)
    except FERDataError as err:
        message = str(err)
        assert str(source) in message, message
        if csv and not any(p in err.problem for p in FILE_LEVEL_PROBLEMS):
            assert err.line is not None and f"line {err.line}" in message, message
        leftovers = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.exists() else []
        assert not leftovers, f"a failed read left {leftovers} in the cache"
        return
    assert list(out) == list(splits)
    for data in out.values():
        assert data.images.dtype == np.uint8 and data.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
        assert data.labels.dtype == np.int32 and len(data.labels) == len(data.images) > 0
        assert data.labels.min() >= 0 and data.labels.max() <= 6


@SETTINGS
@given(
    ops=st.lists(CORRUPTION, min_size=1, max_size=4),
    compress=st.booleans(),
    corrupt_after_compressing=st.booleans(),
    splits=SPLIT_CHOICES,
)
def test_corrupted_csv_is_read_or_rejected_with_file_and_line(
    ops, compress, corrupt_after_compressing, splits
):
    data = VALID_CSV
    if compress:
        data = gzip.compress(data, mtime=0)
        data = _corrupt(data, ops) if corrupt_after_compressing else gzip.compress(_corrupt(VALID_CSV, ops))
    else:
        data = _corrupt(data, ops)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("fer2013.csv.gz" if compress else "fer2013.csv")
        path.write_bytes(data)
        _check(path, splits, Path(tmp) / "cache", csv=True)


# ------------------------------------------------------------------------------------ images

TREE = {
    "train/angry/Training_1.png": 0,
    "train/happy/Training_2.png": 1,
    "val/sad/face.png": 2,
    "test/neutral/PrivateTest_3.jpg": 3,
}


def _encode(img: np.ndarray, name: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG" if name.endswith(".jpg") else "PNG")
    return buf.getvalue()


ENCODED = {rel: _encode(_image(10 + seed), rel) for rel, seed in TREE.items()}

IMAGE_CORRUPTION = st.tuples(
    st.sampled_from(sorted(TREE)),
    st.sampled_from(["flip", "truncate", "insert", "zero_run", "resize", "colour", "bad_class"]),
    st.integers(0, 9999).map(lambda i: i / 10000),
    st.integers(0, 255),
)


def _build_tree(root: Path, ops) -> None:
    files = dict(ENCODED)
    for rel, kind, where, value in ops:
        if rel not in files:
            continue
        if kind == "resize":
            files[rel] = _encode(_image(value)[: 1 + value % IMAGE_SIZE], rel)
        elif kind == "colour":
            rgb = np.dstack([_image(value), _image(value), _image(value + 1)])
            files[rel] = _encode(rgb, rel)
        elif kind == "bad_class":
            parts = rel.split("/")
            files["/".join([*parts[:-2], "happpy", parts[-1]])] = files.pop(rel)
        else:
            files[rel] = _corrupt(files[rel], [(kind, where, value)])
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@SETTINGS
@given(
    ops=st.lists(IMAGE_CORRUPTION, min_size=1, max_size=3),
    archive=st.sampled_from(["folder", "tar", "tar.gz"]),
    archive_ops=st.lists(CORRUPTION, max_size=2),
    splits=SPLIT_CHOICES,
)
def test_corrupted_images_are_read_or_rejected_with_the_source(ops, archive, archive_ops, splits):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "faces"
        _build_tree(root, ops)
        source = root
        if archive != "folder":
            source = Path(tmp) / f"faces.{archive}"
            with tarfile.open(source, "w:gz" if archive == "tar.gz" else "w") as tf:
                for path in sorted(root.rglob("*")):
                    tf.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
            source.write_bytes(_corrupt(source.read_bytes(), archive_ops))
        _check(source, splits, Path(tmp) / "cache", csv=False)


@pytest.mark.parametrize(
    ("label", "pixel", "problem"),
    [
        ("0", "1" + "0" * 5000, "pixel 2304 = '10000000000000000000...' is outside 0..255"),
        ("9" * 5000, "7", "label '99999999999999999999...' is outside 0..6"),
        ("0" * 5000 + "3", "0" * 5000 + "7", None),  # leading zeros: still the values 3 and 7
    ],
)
def test_integers_too_long_for_int_are_data_errors(tmp_path, label, pixel, problem):
    # Python's int() refuses strings of over 4300 digits with a ValueError of its own.
    row = f"{label},{' '.join(['0'] * 2303 + [pixel])},Training"
    path = tmp_path / "x.csv"
    path.write_text(f"emotion,pixels,Usage\n{row}\n")
    if problem is None:
        out = load_fer2013_cached(path, ["train"], tmp_path / "cache")["train"]
        assert out.labels.tolist() == [3] and out.images[0, -1, -1] == 7
        return
    with pytest.raises(FERDataError) as info:
        load_fer2013_cached(path, ["train"], tmp_path / "cache")
    assert str(info.value) == f"{path}, line 2: {problem}"
