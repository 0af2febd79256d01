"""benchmarks/train_throughput.py's figures: a finite step, its FLOP count and utilisation."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import device_peaks
from benchmarks import train_throughput as tt
from fer_flax import parallel, sweep_space


def test_peaks_of_known_gpus_and_none_for_cpus():
    assert device_peaks.peak_tflops("NVIDIA H200", "bfloat16") == 989.4
    assert device_peaks.peak_tflops("NVIDIA H200", "float32") == 494.7  # TF32
    assert device_peaks.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert device_peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4  # SXM
    assert device_peaks.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
    assert device_peaks.peak_tflops("cpu", "float32") is None


def test_measure_train_counts_the_step_flops():
    mesh = parallel.make_mesh()
    row = tt.measure_train("cnn", "tiny", "float32", batch=8, steps=1, mesh=mesh)
    assert row["finite_loss"] and row["images_per_s"] > 0
    # The tiny CNN's convolutions alone: forward 2·N·H·W·9·Cin·Cout per layer, three passes in
    # training; XLA's count of the whole step (pooling, BatchNorm, optimizer) is a little above.
    convs = [(48, 1, 16), (24, 16, 32), (12, 32, 64)]  # (spatial size, in, out) of its 3x3 convs
    conv_gflop = sum(3 * 2 * 8 * s * s * 9 * cin * cout for s, cin, cout in convs) / 1e9
    assert conv_gflop < row["step_gflop"] < 1.5 * conv_gflop
    assert row["tflops_per_s"] == pytest.approx(row["step_gflop"] * row["images_per_s"] / 8 / 1e3)
    if jax.devices()[0].platform == "cpu":
        assert row["mfu"] is None  # no peak known for a CPU


def test_step_flops_falls_back_to_the_compiled_count():
    """jax's GPU backend counts no FLOPs before compilation (cost_analysis() is None there): the
    count then comes from the compiled executable. Both agree on this CPU."""
    lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((16, 32)), jnp.ones((32, 8)))
    assert device_peaks.step_flops(lowered) == pytest.approx(2 * 16 * 32 * 8, rel=0.01)

    class UncountedBeforeCompilation:  # what the GPU backend's Lowered answers
        def cost_analysis(self):
            return None

        def compile(self):
            return lowered.compile()

    assert device_peaks.step_flops(UncountedBeforeCompilation()) == device_peaks.step_flops(lowered)

    class NeverCounted(UncountedBeforeCompilation):
        def compile(self):
            return self

    assert device_peaks.step_flops(NeverCounted()) is None


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
