"""benchmarks/train_throughput.py's figures: a finite step, its FLOP count and utilisation."""

import jax
import pytest

from benchmarks import device_peaks
from benchmarks import train_throughput as tt
from fer_flax.core import flops, parallel
from fer_flax.research.sweep import space as sweep_space


def test_peaks_of_known_gpus_and_none_for_cpus():
    assert device_peaks.peak_tflops("NVIDIA H200", "bfloat16") == 989.4
    assert device_peaks.peak_tflops("NVIDIA H200", "float32") == 494.7  # TF32
    assert device_peaks.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert device_peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4  # SXM
    assert device_peaks.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
    assert device_peaks.peak_tflops("cpu", "float32") is None


def test_the_benchmarks_count_flops_with_the_packages_counter():
    assert device_peaks.step_flops is flops.step_flops


def test_measure_train_counts_the_step_flops():
    mesh = parallel.make_mesh()
    row = tt.measure_train("cnn", "tiny", "float32", batch=8, steps=1, mesh=mesh)
    assert row["finite_loss"] and row["images_per_s"] > 0
    # The tiny CNN's convolutions: forward 2·N·H·W·9·Cin·Cout per layer, three passes in training
    # (forward, input and weight gradients; the images need no gradient, so two for the first
    # layer). The head's dense layers add the rest, a few percent.
    convs = [(48, 1, 16, 2), (24, 16, 32, 3), (12, 32, 64, 3)]  # (spatial size, in, out, passes)
    conv_gflop = sum(p * 2 * 8 * s * s * 9 * cin * cout for s, cin, cout, p in convs) / 1e9
    assert conv_gflop < row["step_gflop"] < 1.1 * conv_gflop
    assert row["tflops_per_s"] == pytest.approx(row["step_gflop"] * row["images_per_s"] / 8 / 1e3)
    if jax.devices()[0].platform == "cpu":
        assert row["mfu"] is None  # no peak known for a CPU


def test_step_flops_of_a_train_step_agrees_with_xlas_count_on_the_cpu():
    """On a CPU, XLA counts every operation of the tiny CNN's train step (forward, gradients,
    optimizer). The two counts differ only at the edges: XLA adds the elementwise work and leaves
    out the window taps that fall on a convolution's zero padding, which the jaxpr count includes
    (the usual convention for model FLOPs)."""
    mesh = parallel.make_mesh()
    config = tt.get_base_config()
    config.model_name, config.model.variant, config.batch_size = "cnn", "tiny", 8
    setup = tt.build_train_step(config, mesh)
    args = (setup.state, setup.device_batch, setup.key)
    ours = device_peaks.step_flops(setup.step.trace(*args))
    cost = setup.step.lower(*args).cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    assert 0.9 < ours / xla < 1.1


def test_a_config_file_is_measured_at_its_own_model_and_named_by_the_file(capsys):
    """`--configs`: the row measures the file's own model (here the deep CPU teacher, convs (1, 1, 2,
    2)) and the table names it by the file, not by a variant two files may share."""
    config = sweep_space.load_config_file("configs/cpu_teacher.py:smoke")
    config.batch_size = 8
    row = {"config": "configs/cpu_teacher.py:smoke"}
    row |= tt.measure_config(config, steps=1, mesh=parallel.make_mesh())
    plain = tt.measure_train(
        "cnn", config.model.variant, "float32", batch=8, steps=1, mesh=parallel.make_mesh()
    )
    assert row["finite_loss"] and row["params_m"] > plain["params_m"]  # the extra convolutions
    tt.print_table([row], None)
    assert "cpu_teacher.py:smoke" in capsys.readouterr().out
