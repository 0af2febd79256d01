"""fer_flax.core.flops: matrix FLOPs counted from a jaxpr, for a whole step and for one forward pass."""

import functools

import jax
import jax.numpy as jnp

from configs import simple_cnn
from fer_flax.core import flops
from fer_flax.core.model import create_model


def test_step_flops_counts_the_convolutions_and_matrix_products_of_the_jaxpr():
    """Exact counts for a product, a convolution (grouped too), a scan's body times its length and
    a cond's costliest branch; elementwise work is not counted."""
    a, b = jnp.ones((16, 32)), jnp.ones((32, 8))
    assert flops.step_flops(jax.jit(lambda a, b: jnp.tanh(a @ b)).trace(a, b)) == 2 * 16 * 32 * 8

    def conv(x, w, groups=1):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
        )

    x = jnp.ones((2, 12, 12, 8))
    dense = 2 * (2 * 12 * 12 * 16) * (3 * 3 * 8)  # per output element: 3x3 window x 8 input features
    assert flops.step_flops(jax.jit(conv).trace(x, jnp.ones((3, 3, 8, 16)))) == dense
    grouped = jax.jit(functools.partial(conv, groups=4)).trace(x, jnp.ones((3, 3, 2, 16)))
    assert flops.step_flops(grouped) == dense / 4

    def scanned(a, b):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ b), None), a, length=5)[0]

    square = jnp.ones((32, 32))
    assert flops.step_flops(jax.jit(scanned).trace(jnp.ones((16, 32)), square)) == 5 * 2 * 16 * 32 * 32

    def branches(p, a, b):
        return jax.lax.cond(p, lambda: (a @ b) @ b.T @ b, lambda: a @ b)

    assert flops.step_flops(jax.jit(branches).trace(True, a, b)) == 2 * 16 * 32 * 8 * 3


def test_forward_flops_of_the_tiny_cnn_are_its_convolutions_and_dense_layers():
    """One 48x48 image through the tiny CNN: 3x3 convolutions per stage (the stem on 1 channel) at
    48, 24 and 12 pixels, then the dense head on the 6x6x64 map. Built with the CPU kernels, the
    single-channel stem is not a convolution in the jaxpr: the count is of the stock model."""
    config = simple_cnn.get_config()
    stock = create_model(config, cpu_kernels=False)
    convs = [(48, 1, 16), (24, 16, 32), (12, 32, 64)]  # (spatial size, in, out)
    conv_flops = sum(2 * s * s * 9 * cin * cout for s, cin, cout in convs)
    dense_flops = 2 * (6 * 6 * 64 * 128 + 128 * 7)
    assert flops.forward_flops(stock, (48, 48, 1)) == conv_flops + dense_flops
