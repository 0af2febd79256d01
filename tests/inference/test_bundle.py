"""The bundled model: built from a run by `fer_flax.bundle`, loaded with no workdir, the same model as
the run's checkpoint (to its storage precision), used by evaluate, explain and predict without
`--workdir`, and reproducing the PublicTest figures its card states."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from fer_flax.core import tta
from fer_flax.inference import bundle, engine, evaluate, explain, model_card
from fer_flax.run import bundled, trained
from tests.helpers.trained_runs import synthetic_split, write_fer_csv

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")


@pytest.fixture(scope="module")
def public_test_csv(tmp_path_factory):
    """A FER2013 CSV whose PublicTest rows are the tiny run's validation faces."""
    val = synthetic_split("val")
    path = tmp_path_factory.mktemp("fer2013") / "fer2013.csv"
    rows = [(int(label), image, "PublicTest") for image, label in zip(val.images, val.labels, strict=True)]
    write_fer_csv(path, [*rows, (0, val.images[0], "Training")])
    return path


@pytest.fixture(scope="module")
def built(trained_run, public_test_csv, tmp_path_factory):
    """The tiny run bundled in bfloat16 with its PublicTest figures (a tmp folder, not the package's)."""
    out = tmp_path_factory.mktemp("bundles") / "bundled"
    manifest = bundle.build(trained_run, out, data_path=str(public_test_csv), announce=lambda *_: None)
    return out, manifest


def test_the_bundle_holds_the_runs_model_in_a_safe_compact_format(trained_run, built, tmp_path):
    out, manifest = built
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "bundle.json", "config.json", "weights.msgpack"]
    for name in os.listdir(out):  # package data: readable by every user
        assert os.stat(out / name).st_mode & stat.S_IROTH, name
    assert json.loads((out / "bundle.json").read_text()) == manifest
    assert manifest["storage_dtype"] == "bfloat16" and manifest["source"]["checkpoint_step"] == 4
    assert manifest["bytes"] == os.path.getsize(out / "weights.msgpack")
    # No path of the machine that built it: the run and the data by name only.
    text = (out / "config.json").read_text() + (out / "bundle.json").read_text()
    assert str(trained_run) not in text and os.path.dirname(trained_run) not in text

    run = trained.restore(trained_run)
    faces = synthetic_split("val").images
    expected = engine.member_probabilities([run], faces, batch_size=32)
    loaded = bundled.load(out)
    assert loaded.bundled and loaded.step == run.step and loaded.spec == run.spec
    got = engine.member_probabilities([loaded], faces, batch_size=32)
    np.testing.assert_allclose(got, expected, atol=0.02)  # bfloat16 params: about 3 digits
    # float32 storage is the checkpoint exactly, at twice the size.
    exact = bundle.build(trained_run, tmp_path / "f32", dtype="float32", announce=lambda *_: None)
    assert exact["figures"] is None and exact["bytes"] > 1.9 * manifest["bytes"]
    got = engine.member_probabilities([bundled.load(tmp_path / "f32")], faces, batch_size=32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_the_card_states_the_figures_the_bundled_files_give(built, public_test_csv):
    out, manifest = built
    figures = manifest["figures"]
    member = bundled.load(out)
    split, _ = evaluate.load_eval_split([member], "val", str(public_test_csv), announce=lambda *_: None)
    report = evaluate.evaluate_split([member], split, batch_size=32, tta_mode=manifest["tta"])
    assert figures["num_examples"] == len(split.labels) == 64 and figures["data"] == "fer2013.csv"
    assert figures["accuracy"] == report["accuracy"] and figures["ece"] == report["ece"]
    assert [figures["per_class"][n]["recall"] for n in split.class_names] == [
        report["per_class"][n]["recall"] for n in split.class_names
    ]
    card = (out / "MODEL_CARD.md").read_text()
    assert f"| {figures['accuracy']:.4f} |" in card and f"{figures['ece']:.4f}" in card
    assert "SYNTHETIC" in card  # the tiny run was trained on the synthetic faces
    worst = figures["top_confusions"][0]
    assert f"| {worst['true']} | {worst['predicted']} | {worst['faces']} |" in card


def test_top_confusions_by_hand():
    confusion = [[5, 3, 0], [1, 4, 1], [0, 3, 2]]
    pairs = model_card.top_confusions(confusion, ("a", "b", "c"), 2)
    assert pairs == [
        {"true": "a", "predicted": "b", "faces": 3, "share_of_true": 3 / 8},
        {"true": "c", "predicted": "b", "faces": 3, "share_of_true": 3 / 5},
    ]


def test_commands_use_the_bundled_model_without_a_workdir(built, public_test_csv, monkeypatch, tmp_path):
    out, manifest = built
    monkeypatch.setattr(bundled, "BUNDLED_DIR", out)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the bundled model's parse cache
    (member,) = engine.load_members(None)
    assert member.bundled and member.workdir == str(out.resolve())
    report = evaluate.evaluate_workdirs(
        None, data_path=str(public_test_csv), tta_mode=manifest["tta"], announce=lambda *_: None
    )
    assert report["accuracy"] == manifest["figures"]["accuracy"] and report["files"] == {}
    assert report["models"][0]["bundled"] and (tmp_path / "cache" / "fer_flax").is_dir()
    with pytest.raises(ValueError, match="carries no data: pass --data"):
        evaluate.evaluate_workdirs(None)
    with pytest.raises(ValueError, match="give --workdir"):
        engine.load_members(None, "latest")

    face = tmp_path / "face.png"
    Image.fromarray(synthetic_split("val").images[0]).save(face)
    explained = explain.run(None, str(tmp_path / "explained"), [str(face)], samples=2)
    record = json.loads((tmp_path / "explained" / "explanations.json").read_text())
    assert explained.endswith("explained") and [f["source"] for f in record["faces"]] == [str(face)]


def test_a_missing_or_damaged_bundle_is_one_clear_error(built, tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "absent")
    with pytest.raises(
        bundled.BundledModelMissing, match=r"ships no bundled model.*python -m fer_flax\.bundle"
    ):
        engine.load_members([])
    assert isinstance(bundled.BundledModelMissing("x"), OSError)  # the preamble's one error line

    out, _ = built
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in os.listdir(out):
        (damaged / name).write_bytes((out / name).read_bytes())
    blob = bytearray((damaged / "weights.msgpack").read_bytes())
    blob[-1] ^= 0xFF
    (damaged / "weights.msgpack").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"weights\.msgpack is damaged"):
        bundled.load(damaged)


def test_an_earlier_bundle_is_replaced_and_another_folder_refused(trained_run, tmp_path):
    out = tmp_path / "bundled"
    bundle.build(trained_run, out, dtype="float32", announce=lambda *_: None)
    first = (out / "weights.msgpack").read_bytes()
    (out / "stray.txt").write_text("left by hand")
    bundle.build(trained_run, out, announce=lambda *_: None)
    assert not (out / "stray.txt").exists() and (out / "weights.msgpack").read_bytes() != first
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not an earlier output of fer_flax\.bundle"):
        bundle.build(trained_run, other, announce=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundled", "other"]  # no staging left behind


def test_the_package_bundle_reproduces_its_card(real_data_dir, tmp_path, monkeypatch):
    """The bundled model that ships with the package (where there is one) gives the PublicTest
    figures its card states."""
    if not bundled.is_present():
        pytest.skip("this copy of fer_flax ships no bundled model")
    manifest = bundled.read_manifest()
    figures = manifest["figures"]
    assert figures, "the shipped bundle must be built with --data (its card states its figures)"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    report = evaluate.evaluate_workdirs(
        None,
        data_path=str(real_data_dir / "fer2013.csv.gz"),
        tta_mode=figures["tta"],
        crop_size=manifest["crop_size"] or tta.DEFAULT_CROP_SIZE,
        announce=lambda *_: None,
    )
    assert report["num_examples"] == figures["num_examples"]
    # The same files, data and program; a few faces' arg-max may flip between CPUs.
    assert report["accuracy"] == pytest.approx(figures["accuracy"], abs=1e-3)
    assert report["ece"] == pytest.approx(figures["ece"], abs=2e-3)
    card = (bundled.BUNDLED_DIR / bundled.CARD_FILE).read_text()
    assert f"| {figures['accuracy']:.4f} |" in card
