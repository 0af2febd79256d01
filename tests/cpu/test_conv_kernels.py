"""benchmarks/conv_kernels.py finds every convolution of a model's train step and counts its FLOPs
as XLA does. Skipped when torch (the `bench` extra) is not installed."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import conv_kernels as ck  # noqa: E402


def test_resnet18_convolutions_are_all_found():
    convs = ck.model_convolutions("resnet", "resnet18", batch=2)
    by_kernel = collections.Counter()
    for (lhs, rhs, strides, _), count in convs.items():
        assert lhs[0] == 2 and lhs[-1] == rhs[2] > 1  # batch 2; the 1-channel stem is not a conv
        by_kernel[(rhs[0], strides[0])] += count
    # ResNet-18's body: 16 3x3 convs (3 of them downsampling) and 3 1x1 projection shortcuts.
    assert by_kernel == {(3, 1): 13, (3, 2): 3, (1, 2): 3}


@pytest.mark.parametrize(
    "spec",
    [
        ((2, 12, 12, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1))),
        ((2, 12, 12, 8), (3, 3, 8, 16), (2, 2), ((0, 1), (0, 1))),
        ((2, 12, 12, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0))),
    ],
)
def test_conv_flops_match_xla_cost_analysis(spec):
    # Dense counting, as the kernels run it: every tap, padding included. XLA's cost analysis skips
    # taps on padding, so it is asked about the same convolution on an input padded beforehand.
    lhs, rhs, strides, padding = spec
    padded = (lhs[0], lhs[1] + sum(padding[0]), lhs[2] + sum(padding[1]), lhs[3])
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x, k, strides, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    compiled = jax.jit(conv).lower(jnp.zeros(padded), jnp.zeros(rhs)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert ck.conv_gflop(spec) * 1e9 == pytest.approx(cost["flops"], rel=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        ((2, 9, 9, 4), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1))),
        ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), ((0, 1), (0, 1))),  # uneven: PyTorch pads first
        ((2, 9, 9, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),
    ],
)
def test_both_frameworks_time_the_same_convolution(spec):
    x = np.random.default_rng(0).standard_normal(spec[0]).astype(np.float32)
    k = np.random.default_rng(1).standard_normal(spec[1]).astype(np.float32)
    xla_fwd, xla_grads = ck.xla_conv(spec)
    torch_fwd, torch_grads = ck.torch_conv(spec)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    with torch.no_grad():
        (y,) = torch_fwd(tx, tk)
        grad_x, grad_k = torch_grads(tx, tk)
    np.testing.assert_allclose(y.numpy().transpose(0, 2, 3, 1), xla_fwd(x, k), rtol=1e-4, atol=1e-4)
    want_x, want_k = xla_grads(x, k)
    np.testing.assert_allclose(grad_x.numpy().transpose(0, 2, 3, 1), want_x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grad_k.numpy().transpose(2, 3, 1, 0), want_k, rtol=1e-4, atol=1e-3)
    assert min(ck.time_xla(spec, reps=1) + ck.time_torch(spec, reps=1)) > 0
    split = ck.time_gradients_separately(spec, reps=1)
    assert sorted(split) == ["torch_input_grad", "torch_kernel_grad", "xla_input_grad", "xla_kernel_grad"]
    assert min(split.values()) > 0
