"""Portable export: the jax.export artifact and the ONNX model give fer_flax's own probabilities at any
batch size, and the artifact loads and runs in a process where fer_flax cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fer_flax.core import parallel
from fer_flax.inference import engine as inference
from fer_flax.inference import export
from fer_flax.run import trained
from fer_flax.run.staged_outputs import StagedOutputs
from tests.helpers.trained_runs import synthetic_split

pytestmark = pytest.mark.xdist_group("trained_run")

SIZES = (1, 5, 13)  # every artifact is traced once, with a symbolic batch


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The tiny run exported with flip TTA (the run itself evaluates without TTA), with fer_flax's
    own probabilities for 13 validation faces."""
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    restored = trained.restore(trained_run, mesh=mesh)
    out = tmp_path_factory.mktemp("export") / "model"
    info = export.export_run(restored, str(out), tta_mode="flip")
    faces = synthetic_split("val").images[: max(SIZES)]
    # Batches of the export's own probe batch: the program it compiled for its check is reused.
    expected = inference.member_probabilities(
        [restored], faces, batch_size=export.PROBE_BATCH, tta_mode="flip", mesh=mesh
    )
    return out, info, faces, expected, restored


def test_jax_artifact_equals_fer_flax_at_any_batch_size(exported):
    out, info, faces, expected, _ = exported
    assert info["tta"] == "flip" and info["jax"]["platforms"] == ["cpu", "cuda"]
    assert json.loads((out / "model.json").read_text()) == info
    assert info["jax"]["bytes"] == os.path.getsize(out / "model.jaxexport")
    artifact = jax.export.deserialize(bytearray((out / "model.jaxexport").read_bytes()))
    for n in SIZES:
        got = np.asarray(artifact.call(faces[:n]))
        assert got.shape == (n, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[:n], rtol=0, atol=1e-5)


def test_loader_runs_without_fer_flax(exported, tmp_path):
    out, _, faces, expected, _ = exported
    np.save(tmp_path / "faces.npy", faces)
    block = (
        "import importlib.abc, runpy, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'fer_flax':\n"
        "            raise ImportError('fer_flax is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['load_model.py', 'faces.npy', 'probabilities.npy']\n"
        f"runpy.run_path({str(out / 'load_model.py')!r}, run_name='__main__')\n"
        "assert not [m for m in sys.modules if m.startswith('fer_flax')]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(faces)
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), expected, rtol=0, atol=1e-5)

    # jax alone cannot read the artifact: without flatbuffers the loader says what to install.
    no_flatbuffers = block.replace("== 'fer_flax'", "in ('fer_flax', 'flatbuffers')")
    done = subprocess.run(
        [sys.executable, "-c", no_flatbuffers],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and done.stderr.strip().endswith("pip install flatbuffers"), done.stderr
    assert "jax, numpy and flatbuffers" in (out / "load_model.py").read_text()


def test_onnx_model_equals_fer_flax_under_onnxruntime(exported):
    pytest.importorskip("jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out, info, faces, expected, _ = exported
    assert info["onnx"]["file"] == "model.onnx", info["onnx"]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(uint8)")]
    for n in SIZES:
        got = session.run(["probabilities"], {"images": faces[:n]})[0]
        np.testing.assert_allclose(got, expected[:n], rtol=0, atol=1e-4)


def test_bad_requests_are_refused_before_any_work(exported, tmp_path):
    restored = exported[-1]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not an export")
    with pytest.raises(ValueError, match=r"not an earlier output of fer_flax\.export"):
        export.export_run(restored, str(other))
    with pytest.raises(ValueError, match="--platforms must include this machine's platform"):
        export.export_run(restored, str(tmp_path / "gpu_only"), platforms=["cuda"])
    with pytest.raises(ValueError, match="--formats='tflite' is not one of"):
        export.export_run(restored, str(tmp_path / "tflite"), formats=["tflite"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes"] and [p.name for p in other.iterdir()] == [
        "keep.txt"
    ]


def test_an_output_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"

    def write(files: dict[str, str], fail: bool = False) -> None:
        with StagedOutputs(out, replaces="done.json") as staged:
            for name, text in files.items():
                Path(staged.path(name)).write_text(text)
            if fail:
                raise RuntimeError("half way")
            staged.commit()

    write({"done.json": "1", "model.onnx": "old"})
    with pytest.raises(RuntimeError, match="half way"):
        write({"done.json": "2"}, fail=True)
    assert (out / "done.json").read_text() == "1"
    write({"done.json": "3"})  # an earlier file the new output lacks does not survive
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == [
        "done.json"
    ]
    assert (out / "done.json").read_text() == "3"
