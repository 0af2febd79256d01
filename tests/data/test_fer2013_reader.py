"""Tests for the FER2013 readers (CSV, image folders, tar archives) and the parsed-array cache."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.common import get_base_config
from fer_flax.config.schema import ConfigError
from fer_flax.data import cache, fer2013, image_folders, load_splits
from fer_flax.data.cache import load_fer2013_cached
from fer_flax.data.fer2013 import read_fer2013
from fer_flax.data.splits import CLASS_NAMES, FERDataError
from tests.helpers import REAL_DATA_DIR as REAL_DATA

HEADER = "emotion,pixels,Usage"


# ------------------------------------------------------------------------------------ helpers


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def _pixels(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel().tolist()))


def _row(label: int | str, img: np.ndarray, usage: str = "Training") -> str:
    return f"{label},{_pixels(img)},{usage}"


def _write(path: Path, lines: list[str], *, newline: str = "\n", gz: bool = False, bom: bool = False) -> Path:
    data = (newline.join(lines) + newline).encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# Two Training rows, one PublicTest, one PrivateTest; images seeded by row index.
ROWS = [(0, 0, "Training"), (3, 1, "Training"), (6, 2, "PublicTest"), (2, 3, "PrivateTest")]


def _good_lines() -> list[str]:
    return [HEADER] + [_row(label, _image(seed), usage) for label, seed, usage in ROWS]


def _raises(fn, *args) -> FERDataError:
    with pytest.raises(FERDataError) as info:
        fn(*args)
    return info.value


def _save_image(path: Path, img: Image.Image | np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img.save(path, format=fmt)


def _make_tree(root: Path, files: dict[str, np.ndarray | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            _save_image(path, content, fmt="PNG")  # lossless, so pixels can be compared exactly
    return root


def _make_tar(src: Path, dest: Path, arc_root: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(dest, mode) as tf:
        for path in sorted(src.rglob("*"), reverse=True):  # archive order must not matter
            if path.is_file():
                tf.add(path, arcname=arc_root + path.relative_to(src).as_posix())
    return dest


# --------------------------------------------------------------------------------- CSV: reading


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz"])
def test_csv_round_trip(tmp_path, gz, name):
    # Compression is detected from the content, so either name works for either encoding.
    path = _write(tmp_path / name, _good_lines(), gz=gz)
    out = read_fer2013(path, ["train", "val", "test"])
    assert list(out) == ["train", "val", "test"]
    np.testing.assert_array_equal(out["train"].images, np.stack([_image(0), _image(1)]))
    np.testing.assert_array_equal(out["train"].labels, [0, 3])
    assert out["train"].labels.dtype == np.int32 and out["train"].images.dtype == np.uint8
    np.testing.assert_array_equal(out["val"].images[0], _image(2))
    np.testing.assert_array_equal(out["test"].labels, [2])


def test_csv_good_rows_take_the_fast_path(tmp_path, monkeypatch):
    # The per-token parser is only for locating errors; were it used for every row, the real
    # 32k-row file would take minutes (e.g. if numpy's text parsing changed behaviour).
    path = _write(tmp_path / "x.csv", _good_lines())

    def no_slow_path(*args):
        raise AssertionError("slow path used for a good row")

    monkeypatch.setattr(fer2013, "_parse_pixels_slow", no_slow_path)
    assert len(read_fer2013(path, ["train", "val", "test"])["train"]) == 2


def test_csv_tolerates_bom_crlf_header_spaces_and_blank_lines(tmp_path):
    lines = _good_lines()
    lines[0] = "  emotion , pixels,Usage "
    lines.insert(2, "")
    path = _write(tmp_path / "x.csv", [*lines, "", ""], newline="\r\n", bom=True)
    out = read_fer2013(path, ["val", "train"])
    assert list(out) == ["val", "train"]
    np.testing.assert_array_equal(out["train"].labels, [0, 3])
    np.testing.assert_array_equal(out["val"].images[0], _image(2))


def test_csv_never_parses_unrequested_rows_but_checks_their_usage(tmp_path, monkeypatch):
    lines = _good_lines()
    lines[4] = "banana,not pixels at all,PrivateTest"  # label and pixels both invalid
    path = _write(tmp_path / "x.csv", lines)
    parsed_lines = []
    original = fer2013._parse_pixels
    monkeypatch.setattr(
        fer2013,
        "_parse_pixels",
        lambda p, field, n: parsed_lines.append(n) or original(p, field, n),
    )
    out = read_fer2013(path, ["train", "val"])
    assert len(out["train"]) == 2 and parsed_lines == [2, 3, 4]

    err = _raises(read_fer2013, path, ["test"])
    assert "line 5" in str(err) and "'banana' is not an integer" in str(err)

    lines[4] = _row(2, _image(3), "Privatetest")  # Usage is validated for every row
    err = _raises(read_fer2013, _write(tmp_path / "y.csv", lines), ["train"])
    assert "line 5" in str(err) and "unknown Usage 'Privatetest'" in str(err)


def test_csv_missing_split_lists_what_the_file_holds(tmp_path):
    path = _write(tmp_path / "x.csv", _good_lines()[:4])  # no PrivateTest row
    err = _raises(read_fer2013, path, ["train", "test"])
    assert str(path) in str(err)
    assert (
        "no rows with Usage=PrivateTest (split 'test'); the file holds Training (2), PublicTest (1)"
        in str(err)
    )
    err = _raises(read_fer2013, _write(tmp_path / "h.csv", [HEADER]), ["train"])
    assert "the file holds no data rows" in str(err)


def test_bad_split_names_and_missing_path(tmp_path):
    path = _write(tmp_path / "x.csv", _good_lines())
    with pytest.raises(ConfigError, match=r"split='validation' is not one of: train, val, test") as info:
        read_fer2013(path, ["validation"])
    assert not isinstance(info.value, FERDataError)
    with pytest.raises(ConfigError, match=r"split='validation'"):  # before any synthesis or read
        load_splits(get_base_config().data, ["train", "validation"])
    with pytest.raises(ValueError, match="no splits"):
        read_fer2013(path, [])
    assert list(read_fer2013(path, "train")) == ["train"]  # a bare string is one split
    err = _raises(read_fer2013, tmp_path / "nope.csv", ["train"])
    assert "nope.csv" in str(err) and "no such file" in str(err)


# ---------------------------------------------------------------------------------- CSV: errors

_GOOD = _pixels(_image(9)).split()


def _with_pixel(i: int, token: str) -> str:
    tokens = list(_GOOD)
    tokens[i] = token
    return " ".join(tokens)


ROW_ERRORS = [
    ("0," + " ".join(_GOOD), "expected 3 columns (emotion,pixels,Usage), found 2"),
    (_row(0, _image(9)) + ",extra", "expected 3 columns (emotion,pixels,Usage), found 4"),
    ("x," + " ".join(_GOOD) + ",Training", "label 'x' is not an integer"),
    ("2.0," + " ".join(_GOOD) + ",Training", "label '2.0' is not an integer"),
    ("7," + " ".join(_GOOD) + ",Training", "label 7 is outside 0..6"),
    ("-1," + " ".join(_GOOD) + ",Training", "label -1 is outside 0..6"),
    ("1," + " ".join(_GOOD[:-1]) + ",Training", "expected 2304 pixel values (48x48), found 2303"),
    ("1," + " ".join([*_GOOD, "5"]) + ",Training", "found 2305"),
    ("1,,Training", "found 0"),
    ("1," + _with_pixel(4, "12a") + ",Training", "pixel 5 is not an integer: '12a'"),
    ("1," + _with_pixel(0, "1.5") + ",Training", "pixel 1 is not an integer: '1.5'"),
    ("1," + _with_pixel(3, "x" * 50) + ",Training", "pixel 4 is not an integer: 'xxxxxxxxxxx"),
    ("1," + _with_pixel(6, "256") + ",Training", "pixel 7 = 256 is outside 0..255"),
    ("1," + _with_pixel(6, "-1") + ",Training", "pixel 7 = -1 is outside 0..255"),
    # 2**64 + 5 would wrap to 5 in a fixed-width parse; it must be reported, not read as 5.
    ("1," + _with_pixel(2303, str(2**64 + 5)) + ",Training", f"pixel 2304 = '{2**64 + 5}' is outside"),
    ("1," + " ".join(_GOOD) + ",Validation", "unknown Usage 'Validation'; valid: Training, Pub"),
    ("1," + " ".join(_GOOD) + ",", "unknown Usage ''"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("bad_row", "problem"), ROW_ERRORS)
def test_csv_row_errors_name_file_line_and_problem(tmp_path, bad_row, problem, gz):
    lines = _good_lines()
    lines.insert(3, bad_row)  # file line 4
    path = _write(tmp_path / "bad.csv", lines, gz=gz)
    err = _raises(read_fer2013, path, ["train", "val", "test"])
    assert err.line == 4 and err.source == str(path)
    assert str(err).startswith(f"{path}, line 4: ") and problem in str(err)
    assert "x" * 21 not in str(err)  # long tokens are truncated


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b" \r\n", "empty file"),
        (b"emotion,pixel,Usage\n", "expected the header 'emotion,pixels,Usage', got 'emotion,pi"),
        (b"Emotion,Pixels,Usage\n0,1,Training\n", "got 'Emotion,Pixels,Usage'"),
        (b"\n" + HEADER.encode() + b"\n", "got ''"),
        (b"emotion,pixels\n0,1 2\n", "the Usage column is required"),
        (b"\xff\xfeemotion\n", "not UTF-8"),
    ],
)
def test_csv_header_errors(tmp_path, content, problem):
    path = tmp_path / "h.csv"
    path.write_bytes(content)
    err = _raises(read_fer2013, path, ["train"])
    assert str(err).startswith(f"{path}, line 1: ") and problem in str(err)


def _big_gz(tmp_path: Path) -> bytes:
    lines = [HEADER] + [_row(i % 7, _image(i), "Training") for i in range(40)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = _big_gz(tmp_path)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    err = _raises(read_fer2013, path, ["train"])
    assert str(path) in str(err) and "truncated or corrupt" in str(err)
    # Decompression reads ahead, so the break is reported after the last line handed out.
    assert 1 <= err.line <= 41 and "at or after line" in str(err)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.99])
def test_corrupt_gzip_is_a_data_error(tmp_path, where):
    data = bytearray(_big_gz(tmp_path))
    at = int(len(data) * where)
    data[at : at + 64] = bytes(64)  # zeroes over the deflate stream or the CRC trailer
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(bytes(data))
    err = _raises(read_fer2013, path, ["train"])
    assert str(path) in str(err) and err.line is not None


def test_garbage_after_gzip_magic_is_a_data_error(tmp_path):
    path = tmp_path / "x.csv.gz"
    path.write_bytes(b"\x1f\x8b" + b"junk" * 10)
    err = _raises(read_fer2013, path, ["train"])
    assert str(path) in str(err) and "cannot read" in str(err)


def test_zip_is_rejected_with_advice(tmp_path):
    path = tmp_path / "fer2013.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert "unzip it" in str(_raises(read_fer2013, path, ["train"]))


# ------------------------------------------------------------------------------ image folders

IMGS = {i: _image(100 + i) for i in range(8)}
TREE = {
    "train/angry/Training_2.png": IMGS[0],
    "train/angry/Training_10.png": IMGS[1],  # sorts before Training_2
    "train/Happy/face.png": IMGS[2],  # no prefix: split from the folder; class name in any case
    "test/sad/PublicTest_5.png": IMGS[3],  # the prefix wins over the 'test' folder
    "val/fear/face.png": IMGS[4],
    "test/neutral/face.png": IMGS[5],
    "test/neutral/PrivateTest_9.png": IMGS[6],
    "Validation/surprise/PrivateTest_1.png": IMGS[7],
    "train/angry/._Training_3.png": b"AppleDouble junk",  # hidden: ignored
    ".ipynb_checkpoints/angry/x.png": b"junk",
    "train/angry/notes.txt": b"not an image",
}
EXPECTED = {
    "train": ([IMGS[2], IMGS[1], IMGS[0]], [3, 0, 0]),  # sorted by path: "H" < "a"
    "val": ([IMGS[3], IMGS[4]], [4, 2]),
    "test": ([IMGS[7], IMGS[6], IMGS[5]], [5, 6, 6]),
}


def _check_expected(out):
    for split, (images, labels) in EXPECTED.items():
        np.testing.assert_array_equal(out[split].images, np.stack(images), err_msg=split)
        np.testing.assert_array_equal(out[split].labels, labels, err_msg=split)
        assert out[split].labels.dtype == np.int32


def test_image_folder_split_rules_and_order(tmp_path):
    root = _make_tree(tmp_path / "faces", TREE)
    _check_expected(read_fer2013(root, ["train", "val", "test"]))
    assert image_folders.list_image_files(root)[0] == "Validation/surprise/PrivateTest_1.png"


@pytest.mark.parametrize(
    ("name", "arc_root", "mode"),
    [
        ("faces.tar.gz", "", "w:gz"),
        ("faces.tgz", "./", "w:gz"),
        ("faces.tar", "fer2013/", "w"),
        ("faces.bin", "", "w"),  # detected by its ustar magic, not its name
    ],
)
def test_image_tar_matches_folder(tmp_path, name, arc_root, mode):
    tar = _make_tar(_make_tree(tmp_path / "faces", TREE), tmp_path / name, arc_root, mode)
    _check_expected(read_fer2013(tar, ["train", "val", "test"]))


def test_images_of_unrequested_splits_are_not_decoded(tmp_path):
    root = _make_tree(
        tmp_path / "t",
        {"train/angry/a.png": IMGS[0], "test/angry/PrivateTest_1.jpg": b"not a jpeg"},
    )
    assert len(read_fer2013(root, ["train"])["train"]) == 1
    err = _raises(read_fer2013, root, ["test"])
    assert "test/angry/PrivateTest_1.jpg" in str(err) and "cannot decode image" in str(err)


def test_class_folders_directly_under_a_split_folder(tmp_path):
    root = _make_tree(tmp_path / "train", {"angry/a.png": IMGS[0], "sad/b.png": IMGS[1]})
    out = read_fer2013(root, ["train"])
    np.testing.assert_array_equal(out["train"].labels, [0, 4])


def test_grayscale_conversion(tmp_path):
    gray = IMGS[0]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((48, 48, 1), 7, np.uint8)], axis=-1)
    root = tmp_path / "t"
    _save_image(root / "train/angry/rgb.png", rgb)
    _save_image(root / "train/angry/rgba.png", rgba)
    _save_image(root / "train/angry/p.png", Image.fromarray(gray).convert("P"))
    _save_image(root / "train/angry/q.jpg", gray, fmt="JPEG")
    out = read_fer2013(root, ["train"])["train"]
    assert out.images.shape == (4, 48, 48)
    for i in (0, 2, 3):  # p.png, rgb.png, rgba.png: lossless
        np.testing.assert_array_equal(out.images[i], gray)
    assert np.abs(out.images[1].astype(int) - gray).mean() < 30  # q.jpg: JPEG is lossy on noise


@pytest.mark.parametrize("as_tar", [False, True])
@pytest.mark.parametrize(
    ("rel", "content", "problem"),
    [
        ("train/angry/big.png", np.zeros((48, 40), np.uint8), "image is 40x48, expected 48x48"),
        ("train/angry/bad.jpg", b"\xff\xd8 not really a jpeg", "cannot decode image"),
        ("train/angry/colour.png", np.dstack([IMGS[0], IMGS[0], IMGS[1]]), "not grayscale"),
        ("train/happpy/a.png", IMGS[0], "unknown class folder 'happpy'; valid: angry, disgust"),
        ("misc/angry/a.png", IMGS[0], "cannot tell the split"),
        ("angry.png", IMGS[0], "images must sit in a class folder"),
    ],
)
def test_image_errors_name_the_image(tmp_path, rel, content, problem, as_tar):
    if isinstance(content, np.ndarray):
        content = content.astype(np.uint8)
    root = _make_tree(tmp_path / "t", {"train/angry/ok.png": IMGS[0], rel: content})
    source = _make_tar(root, tmp_path / "t.tar.gz") if as_tar else root
    err = _raises(read_fer2013, source, ["train"])
    assert str(err).startswith(str(source)) and rel in str(err) and problem in str(err)


def test_truncated_jpeg_names_the_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(IMGS[0]).save(buf, format="JPEG")
    root = _make_tree(tmp_path / "t", {"train/fear/cut.jpg": buf.getvalue()[:300]})
    err = _raises(read_fer2013, root, ["train"])
    assert "train/fear/cut.jpg" in str(err) and "cannot decode image" in str(err)


def test_empty_sources(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "fer2013.csv.gz").write_bytes(b"")
    err = _raises(read_fer2013, empty, ["train"])
    assert "empty: no images" in str(err) and "fer2013.csv.gz" in str(err)

    tar = tmp_path / "e.tar.gz"
    with tarfile.open(tar, "w:gz"):
        pass
    assert "empty: no images" in str(_raises(read_fer2013, tar, ["train"]))


def test_image_missing_split_lists_what_exists(tmp_path):
    root = _make_tree(tmp_path / "t", {"train/angry/a.png": IMGS[0], "train/sad/b.png": IMGS[1]})
    err = _raises(read_fer2013, root, ["val"])
    assert "no images for split(s) 'val'" in str(err) and "the tree holds train (2)" in str(err)


def test_truncated_tar_is_a_data_error(tmp_path):
    tar = _make_tar(_make_tree(tmp_path / "faces", TREE), tmp_path / "faces.tar.gz")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    err = _raises(read_fer2013, tar, ["train", "val", "test"])
    assert str(tar) in str(err) and "truncated or corrupt" in str(err)


# ------------------------------------------------------------------------------------- cache


def _reader_spy(monkeypatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []
    original = fer2013.read_fer2013

    def spy(path, splits):
        calls.append(tuple(splits))
        return original(path, splits)

    monkeypatch.setattr(fer2013, "read_fer2013", spy)
    return calls


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_cache_second_load_comes_from_cache(tmp_path, monkeypatch):
    path = _write(tmp_path / "x.csv.gz", _good_lines(), gz=True)
    first = load_fer2013_cached(path, ["train", "val"], tmp_path / "cache")

    def fail(*args):
        raise AssertionError("parsed again")

    monkeypatch.setattr(fer2013, "read_fer2013", fail)
    second = load_fer2013_cached(path, ["val", "train"], tmp_path / "cache")
    assert list(second) == ["val", "train"]
    for split in first:
        np.testing.assert_array_equal(first[split].images, second[split].images)
        np.testing.assert_array_equal(first[split].labels, second[split].labels)
        assert second[split].labels.dtype == np.int32


def test_cache_parses_only_missing_splits(tmp_path, monkeypatch):
    path = _write(tmp_path / "x.csv", _good_lines())
    calls = _reader_spy(monkeypatch)
    load_fer2013_cached(path, ["train"], tmp_path / "c")
    out = load_fer2013_cached(path, ["train", "val"], tmp_path / "c")
    load_fer2013_cached(path, ["val", "train"], tmp_path / "c")
    assert calls == [("train",), ("val",)]
    np.testing.assert_array_equal(out["val"].images[0], _image(2))


def test_cache_invalidated_by_touch_and_rewrite_and_prunes_stale(tmp_path, monkeypatch):
    path = _write(tmp_path / "x.csv", _good_lines())
    calls = _reader_spy(monkeypatch)
    load_fer2013_cached(path, ["train"], tmp_path / "c")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_fer2013_cached(path, ["train"], tmp_path / "c")
    assert len(calls) == 2

    lines = _good_lines()
    lines[1] = _row(5, _image(42), "Training")
    _write(path, lines)
    out = load_fer2013_cached(path, ["train"], tmp_path / "c")
    assert len(calls) == 3 and out["train"].labels[0] == 5
    np.testing.assert_array_equal(out["train"].images[0], _image(42))
    assert len([p for p in (tmp_path / "c").iterdir()]) == 1  # older entries were deleted


def test_cache_folder_identity(tmp_path, monkeypatch):
    root = _make_tree(tmp_path / "faces", {"train/angry/a.png": IMGS[0]})
    calls = _reader_spy(monkeypatch)
    load_fer2013_cached(root, ["train"], tmp_path / "c")
    load_fer2013_cached(root, ["train"], tmp_path / "c")
    (root / "train/angry/notes.txt").write_text("ignored by the reader, so by the cache too")
    load_fer2013_cached(root, ["train"], tmp_path / "c")
    assert len(calls) == 1
    _save_image(root / "train/sad/b.png", IMGS[1])
    out = load_fer2013_cached(root, ["train"], tmp_path / "c")
    assert len(calls) == 2 and out["train"].labels.tolist() == [0, 4]
    st = (root / "train/sad/b.png").stat()
    os.utime(root / "train/sad/b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_fer2013_cached(root, ["train"], tmp_path / "c")
    assert len(calls) == 3


def test_cache_failed_read_writes_nothing(tmp_path):
    lines = _good_lines()
    lines[3] = "9," + " ".join(_GOOD) + ",PublicTest"
    path = _write(tmp_path / "x.csv", lines)
    with pytest.raises(FERDataError, match="line 4"):
        load_fer2013_cached(path, ["train", "val"], tmp_path / "c")
    assert not (tmp_path / "c").exists()

    load_fer2013_cached(path, ["train"], tmp_path / "c")
    before = _files(tmp_path / "c")
    assert [f.rsplit("/", 1)[-1] for f in before if "/" in f] == ["source.json", "train.npz"]
    with pytest.raises(FERDataError, match="label 9"):
        load_fer2013_cached(path, ["val"], tmp_path / "c")
    assert _files(tmp_path / "c") == before


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    path = _write(tmp_path / "x.csv", _good_lines())

    def dying_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

    monkeypatch.setattr(cache.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        load_fer2013_cached(path, ["train"], tmp_path / "c")
    assert not [f for f in _files(tmp_path / "c") if f.endswith((".npz", ".tmp"))]
    monkeypatch.undo()
    out = load_fer2013_cached(path, ["train"], tmp_path / "c")
    np.testing.assert_array_equal(out["train"].labels, [0, 3])


def test_cache_rebuilds_an_unreadable_entry(tmp_path, monkeypatch):
    path = _write(tmp_path / "x.csv", _good_lines())
    load_fer2013_cached(path, ["train"], tmp_path / "c")
    (npz,) = (tmp_path / "c").glob("*/train.npz")
    npz.write_bytes(b"garbage")
    calls = _reader_spy(monkeypatch)
    out = load_fer2013_cached(path, ["train"], tmp_path / "c")
    assert calls == [("train",)]
    np.testing.assert_array_equal(out["train"].labels, [0, 3])
    load_fer2013_cached(path, ["train"], tmp_path / "c")
    assert len(calls) == 1


# --------------------------------------------------------------------------------- real data

TRAIN_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]
VAL_COUNTS = [467, 56, 496, 895, 653, 261, 607]
needs_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"real FER2013 not present at {REAL_DATA}"
)


@pytest.fixture(scope="module")
def real_csv(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("fer_cache")
    cold = load_fer2013_cached(REAL_DATA / "fer2013.csv.gz", ["train", "val"], cache_dir)
    return cold, cache_dir


def _check_counts(out):
    assert out["train"].images.shape == (28709, 48, 48) and out["train"].images.dtype == np.uint8
    assert out["train"].class_counts().tolist() == TRAIN_COUNTS
    assert out["val"].class_counts().tolist() == VAL_COUNTS
    assert len(CLASS_NAMES) == len(TRAIN_COUNTS)


@pytest.mark.slow
@needs_real_data
def test_real_csv_counts_cache_and_protocol(real_csv, monkeypatch):
    cold, cache_dir = real_csv
    _check_counts(cold)

    def must_not_parse(*args, **kwargs):
        raise AssertionError("a warm cache must not parse the CSV again")

    monkeypatch.setattr(fer2013, "read_fer2013", must_not_parse)
    warm = load_fer2013_cached(REAL_DATA / "fer2013.csv.gz", ["train", "val"], cache_dir)
    monkeypatch.undo()
    for split in cold:
        np.testing.assert_array_equal(warm[split].images, cold[split].images)
    err = _raises(read_fer2013, REAL_DATA / "fer2013.csv.gz", ["test"])
    assert "no rows with Usage=PrivateTest" in str(err)
    assert "Training (28709), PublicTest (3435)" in str(err)


@pytest.mark.slow
@needs_real_data
def test_real_image_tar_matches_csv(real_csv):
    tar = REAL_DATA / "fer2013_images.tar.gz"
    out = read_fer2013(tar, ["train", "val"])
    _check_counts(out)
    # The JPEGs decode to exactly the CSV's pixels: the same (image, label) multiset per split,
    # in a different order (the tree is sorted by file name).
    csv = real_csv[0]
    for split in ("train", "val"):
        a, b = csv[split], out[split]
        rows_a = sorted(zip(map(bytes, a.images), a.labels.tolist(), strict=True))
        rows_b = sorted(zip(map(bytes, b.images), b.labels.tolist(), strict=True))
        assert rows_a == rows_b, split
    err = _raises(read_fer2013, tar, ["test"])
    assert "no images for split(s) 'test'" in str(err)
