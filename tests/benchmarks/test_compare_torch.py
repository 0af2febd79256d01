"""benchmarks/compare_torch.py times the same networks in PyTorch as in fer_flax: same parameter counts,
and with fer_flax's weights copied in, the same eval-mode logits. Skipped when torch is not installed."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import compare_torch as ct  # noqa: E402
from benchmarks import torch_models as tm  # noqa: E402
from benchmarks import torch_step as ts  # noqa: E402
from fer_flax import models  # noqa: E402
from fer_flax.core import optim, parallel  # noqa: E402
from fer_flax.core.augment import preprocess  # noqa: E402


def _randomise_norms(variables: dict, seed: int) -> dict:
    """Non-trivial BatchNorm scales, shifts and running statistics (and dense biases), so a mapping
    mistake in the converter changes the logits."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1].key
        x = np.asarray(x)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
        if name in ("bias", "mean"):
            return (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(draw, variables)


@pytest.mark.parametrize("spec", ["cnn", "beefy", "resnet18"])
def test_torch_model_is_the_same_network(spec):
    family, variant = ct.resolve_model(spec)
    model = models.create_model(family, variant=variant)
    x = jax.numpy.zeros((1, 48, 48, 1))
    variables = jax.jit(lambda k: model.init({"params": k}, x, train=False))(jax.random.key(0))
    variables = _randomise_norms(variables, seed=1)
    tmodel = tm.torch_model_like(model)
    assert tm.count_torch_params(tmodel) == tm.count_flax_params(variables["params"])

    tm.load_flax_variables(tmodel, variables)
    images = np.random.default_rng(2).integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)
    forward = jax.jit(lambda v, im: model.apply(v, preprocess(im), train=False)[0])
    want = np.asarray(forward(variables, images))
    tmodel.eval()
    scale = max(1.0, float(np.abs(want).max()))
    for fmt in ct.MEMORY_FORMATS.values():
        tmodel = tmodel.to(memory_format=fmt)
        x_t = ts.torch_preprocess(torch.from_numpy(images).permute(0, 3, 1, 2)).contiguous(memory_format=fmt)
        with torch.no_grad():
            got = tmodel(x_t).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_weight_decay_groups_follow_the_flax_mask():
    model = models.create_model("beefy", variant="small")
    params = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jax.numpy.zeros((1, 48, 48, 1)), train=False)
    )["params"]
    mask = jax.tree.leaves(optim.weight_decay_mask(params))
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    decay, no_decay = tm.decay_param_groups(tm.torch_model_like(model), 5e-4)
    assert len(decay["params"]) == sum(mask)
    decayed = sum(s for s, m in zip(sizes, mask, strict=True) if m)
    assert sum(p.numel() for p in decay["params"]) == decayed
    assert sum(p.numel() for p in no_decay["params"]) == sum(sizes) - decayed
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)


def test_torch_augment_is_the_identity_when_off_and_stays_in_range():
    x = ts.torch_preprocess(torch.randint(0, 256, (6, 1, 48, 48), dtype=torch.uint8))
    off = ct.make_config("cnn", "tiny", 8, augment=False).augment
    torch.testing.assert_close(ts.torch_augment(x, off), x, atol=1e-5, rtol=1e-5)
    on = ct.make_config("cnn", "tiny", 8, augment=True).augment
    y = ts.torch_augment(x, on)
    assert y.shape == x.shape
    assert float(y.min()) >= float(x.min()) - 1e-5 and float(y.max()) <= float(x.max()) + 1e-5


def compare_tiny(**overrides):
    settings = dict(batch=4, windows=1, steps=1, warmup=1, memory_format="channels_last", augment=False)
    return ct.compare("cnn", "tiny", mesh=parallel.make_mesh(), **{**settings, **overrides})


def test_compare_runs_both_frameworks_on_tiny_settings():
    row = compare_tiny(augment=True)
    assert row["params"] == row["torch_params"]
    assert row["torch_images_per_s"] > 0 and row["flax_images_per_s"] > 0
    assert np.isfinite(row["torch_final_loss"]) and np.isfinite(row["flax_final_loss"])


def test_compare_in_bfloat16_autocasts_pytorch_and_sets_fer_flax_dtype():
    row = compare_tiny(dtype="bfloat16")
    assert row["dtype"] == "bfloat16" and row["torch_device"] == "cpu"
    assert row["params"] == row["torch_params"]
    assert np.isfinite(row["torch_final_loss"]) and np.isfinite(row["flax_final_loss"])


def test_compare_adds_torch_compile_beside_eager():
    """The torch.compile column: its own copy of the network from the same weights. TorchDynamo's
    "eager" backend keeps the test quick (Inductor's code generation takes minutes on a CPU); the
    compiled module, its parameters under the optimizer and the timing are the ones Inductor gets."""
    row = compare_tiny(torch_compile=True, compile_options={"backend": "eager"})
    assert row["torch_compile_images_per_s"] > 0 and row["torch_compile_s"] > 0
    assert row["ratio_flax_over_torch_compile"] == pytest.approx(
        row["flax_images_per_s"] / row["torch_compile_images_per_s"]
    )
    assert np.isfinite(row["torch_compile_final_loss"])
    assert "torch_compile_images_per_s" not in compare_tiny()  # eager only unless asked


def test_torch_step_runs_its_forward_pass_under_autocast():
    model = tm.torch_model_like(models.create_model("cnn", variant="tiny"))
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    for autocast_dtype, logits_dtype in ((None, torch.float32), (torch.bfloat16, torch.bfloat16)):
        step = ts.make_torch_step(
            model,
            optimizer,
            images,
            torch.zeros(4, dtype=torch.long),
            memory_format=torch.channels_last,
            label_smoothing=0.1,
            augment=None,
            learning_rates=[0.01],
            autocast_dtype=autocast_dtype,
        )
        assert torch.isfinite(step())
        assert seen[-1] == logits_dtype
    assert all(p.dtype == torch.float32 for p in model.parameters())
