"""Saliency maps: properties on hand-made models (where the saliency must be, Grad-CAM's closed form),
the seam that names each family's last convolutional stage, and the explain command on a trained run."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fer_flax import models
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.inference import explain, saliency
from tests.helpers.models import compiled_init

ROWS, COLS = slice(8, 20), slice(24, 40)  # the only region the RegionModel looks at


class RegionModel(nn.Module):
    """Logits of the pixels in ROWS x COLS only."""

    @nn.compact
    def __call__(self, x, *, train):
        h = jnp.tanh(nn.Conv(4, (3, 3))(x[:, ROWS, COLS]))
        return nn.Dense(3)(h.mean(axis=(1, 2))), {}


class Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(5, (3, 3), strides=4)(x))  # [B, 12, 12, 5]


class LinearHead(nn.Module):
    """A linear head on a known feature map: global average pooled, or flattened like PlainCNN's."""

    pool: bool

    @nn.compact
    def __call__(self, x, *, train):
        a = Features(name="features")(x)
        a = a.mean(axis=(1, 2)) if self.pool else a.reshape(a.shape[0], -1)
        return nn.Dense(3, name="head")(a), {}


def _init(model, images):
    return compiled_init(model, jnp.zeros((1, *images.shape[1:], 1)), jax.random.key(0))


def test_a_model_that_sees_one_region_gets_all_its_saliency_there():
    images = generate_synthetic(0, 4, 0)["val"].images
    model = RegionModel()
    out = saliency.explain_batch(
        model,
        _init(model, images),
        images,
        jax.random.key(1),
        methods=("gradxinput", "smoothgrad"),
        samples=4,
    )
    inside = np.zeros(images.shape[1:], bool)
    inside[ROWS, COLS] = True
    for method in ("gradxinput", "smoothgrad"):
        maps = np.asarray(out[method])
        assert maps.shape == images.shape
        assert np.all(maps[:, ~inside] == 0), method
        np.testing.assert_allclose(maps[:, inside].max(axis=1), 1.0, rtol=1e-6)  # normalised, non-zero inside


@pytest.mark.parametrize("pool", [True, False])
def test_gradcam_of_a_linear_head_is_its_closed_form(pool):
    images = generate_synthetic(0, 3, 0)["val"].images
    x = jnp.asarray(images[..., None], jnp.float32) / 255.0
    model = LinearHead(pool)
    variables = _init(model, images)
    classes = jnp.array([0, 2, 1])
    tap = saliency.Tap(("features",)) if pool else saliency.Tap(("head",), side="input", channels=5)
    cam = np.asarray(saliency.gradcam(model, variables, x, classes, tap))

    a = np.asarray(Features().apply({"params": variables["params"]["features"]}, x), np.float64)
    w = np.asarray(variables["params"]["head"]["kernel"], np.float64)[:, np.asarray(classes)]  # [in, B]
    if pool:  # d logit / d A[i, j, k] = W[k] / (h w) everywhere
        alpha = w.T / (a.shape[1] * a.shape[2])
    else:  # d logit / d A[i, j, k] = W[(i w + j) C + k]: alpha is its mean over (i, j)
        alpha = w.T.reshape(len(images), a.shape[1], a.shape[2], a.shape[3]).mean(axis=(1, 2))
    expected = np.maximum(np.einsum("bhwc,bc->bhw", a, alpha), 0)
    assert expected.max() > 0
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "family, variant, side",
    [
        ("cnn", "cpu_fast", 3),
        ("beefy", "small", 12),
        ("resnet", "resnet10_half", 6),
        ("googlenet", "inception_v1_bn_tiny", 6),
    ],
)
def test_every_conv_family_names_its_last_stage(family, variant, side):
    # Traced only: the module the seam names is called (here in init, which runs __call__) and its
    # map is square.
    model = models.create_model(family, variant=variant)
    tap, found = saliency.feature_tap(model), []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path == tap.path:
            found.append((args[0] if tap.side == "input" else out).shape)
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 48, 48, 1)), train=False))
    assert saliency._as_map(jnp.zeros(found[0]), tap).shape[:3] == (2, side, side)
    assert saliency.default_methods(model) == ("gradcam", "smoothgrad")


def test_methods_that_do_not_fit_a_family_are_refused():
    vit = models.create_model("vit", variant="vit_micro")
    cnn = models.create_model("cnn", variant="tiny")
    assert saliency.default_methods(vit) == ("rollout", "smoothgrad")
    with pytest.raises(ValueError, match="gradcam needs a convolutional feature map"):
        saliency.check_methods(vit, ["gradcam"])
    with pytest.raises(ValueError, match="rollout needs attention layers"):
        saliency.check_methods(cnn, ["rollout"])
    with pytest.raises(ValueError, match="--methods='lime' is not one of"):
        saliency.check_methods(cnn, ["lime"])


def test_rollout_of_identity_attention_is_the_identity_and_rows_stay_distributions():
    rollout = jax.jit(saliency.rollout_matrix)
    eye = np.broadcast_to(np.eye(5, dtype=np.float32), (2, 3, 5, 5))
    np.testing.assert_allclose(rollout([eye, eye]), np.broadcast_to(np.eye(5), (2, 5, 5)))
    attn = np.random.default_rng(0).dirichlet(np.ones(5), (2, 3, 5)).astype(np.float32)
    rolled = np.asarray(rollout([attn, attn]))
    assert np.all(rolled > 0)
    np.testing.assert_allclose(rolled.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.xdist_group("trained_run")
def test_explain_command_on_a_trained_run(trained_run, tmp_path):
    out = tmp_path / "explained"
    explain.run(trained_run, str(out), n=10, samples=2)
    record = json.loads((out / "explanations.json").read_text())
    faces = record["faces"]
    assert record["methods"] == ["gradcam", "smoothgrad"] and len(faces) == 10
    assert len({f["true"] for f in faces}) == 7  # every class of the split is shown
    for f in faces:
        assert f["grid"] == f"true-{f['true']}_pred-{f['predicted']}.png" and (out / f["grid"]).is_file()
    arrays = np.load(out / "maps.npz")
    for method in ("gradcam", "smoothgrad"):
        assert arrays[method].shape == (10, 48, 48)
        assert arrays[method].min() >= 0 and arrays[method].max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained"]  # no temporary folders left

    # Image files: a corrupt one is named and nothing is written; readable ones are grouped by prediction.
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, face in enumerate(arrays["faces"]):  # as many as before: the compiled program is reused
        Image.fromarray(face).save(folder / f"face{i}.png")
    (folder / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"zz_broken\.png: cannot read image"):
        explain.run(trained_run, str(tmp_path / "from_files"), [str(folder)], samples=2)
    assert not (tmp_path / "from_files").exists()
    (folder / "zz_broken.png").unlink()
    explain.run(trained_run, str(out), [str(folder)], samples=2)  # replaces the earlier output
    faces = json.loads((out / "explanations.json").read_text())["faces"]
    assert len(faces) == 10 and all(f["true"] is None for f in faces)
    assert all(f["grid"] == f"pred-{f['predicted']}.png" for f in faces)
    with pytest.raises(ValueError, match=r"not an earlier output of fer_flax\.explain"):
        explain.run(trained_run, str(folder), n=2)


@pytest.mark.xdist_group("trained_run")
def test_explain_finds_the_faces_of_a_photo_as_predict_does(trained_run, tmp_path, capsys):
    pytest.importorskip("cv2")
    face_pictures = pytest.importorskip("tests.helpers.face_pictures")
    from fer_flax.inference import photos, predict
    from fer_flax.run import trained

    face_pictures.group_picture().save(tmp_path / "group.png")
    face_pictures.no_face_photos()["coffee"].save(tmp_path / "coffee.png")
    restored = trained.restore(trained_run)
    faces, names = explain.faces_in_images(
        restored, [str(tmp_path / "group.png"), str(tmp_path / "coffee.png")]
    )
    assert names == [f"{tmp_path / 'group.png'}#{k}" for k in (1, 2, 3, 4)] and faces.shape == (4, 48, 48)
    assert f"{tmp_path / 'coffee.png'}: no face found" in capsys.readouterr().out
    # The crops predict classifies, not the whole photo squeezed to 48x48.
    classifier = predict.make_classifier([restored])
    _, _, expected = photos.find_faces(
        face_pictures.group_picture(),
        faces="auto",
        detector=lambda: predict.make_detector(),
        classifier=classifier,
    )
    np.testing.assert_array_equal(faces, expected)
    whole, names = explain.faces_in_images(restored, [str(tmp_path / "group.png")], faces="whole")
    assert names == [str(tmp_path / "group.png")] and whole.shape == (1, 48, 48)
    with pytest.raises(ValueError, match=r"no face found in 1 image\(s\); --faces whole"):
        explain.faces_in_images(restored, [str(tmp_path / "coffee.png")])
