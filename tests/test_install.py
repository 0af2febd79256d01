"""An installed fer_flax (a plain, non-editable `pip install`) restores a run an older version wrote.

Everything else in the suite imports the package from the repository, where `configs/` and any
module the packaging leaves out are importable anyway. Here the package is built and installed into
a fresh virtual environment and its commands run from another folder, so they see only what the
installed distribution holds. The run is `tests/fixtures/old_run` (see tests/fixtures/README.md):
trained by fer_flax at commit d87d3a4, its config.json lacks every key added since (`eval_tta`,
`ema`, `mix`, `distill`, `data.pipeline`, ...), and its best checkpoint predates the selection record
and checksum manifests. Its own metrics.jsonl says what the same weights scored on the same
(synthetic) validation faces; evaluation today must give exactly that. The same run, bundled into the
sources before the build (`fer_flax.bundle`), must come with the install as package data and be what
`predict` uses without a workdir.
"""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_flax.data.splits import CLASS_NAMES
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.inference import bundle
from tests.helpers import REPO

OLD_RUN = REPO / "tests" / "fixtures" / "old_run"


# Whether an interpreter has pyproject.toml's build backend (setuptools>=68) and can make a wheel with
# it without build isolation: setuptools has its own bdist_wheel from 70.1, older ones need `wheel`.
_CAN_BUILD = """
import importlib.metadata, importlib.util
try:
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
except (importlib.metadata.PackageNotFoundError, ValueError):
    version = (0, 0)
print(version >= (70, 1) or (version >= (68, 0) and importlib.util.find_spec("wheel") is not None))
"""


def _make_venv(venv: Path) -> str:
    """A virtual environment that sees this environment's packages (jax, flax, ...) and has no
    fer_flax of its own; its python. `--system-site-packages` shows the base interpreter's packages;
    when the tests themselves run in a virtual environment, its site-packages are added as well,
    after the new environment's own."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True
    )
    python = str(venv / "bin" / "python")
    if sys.prefix != sys.base_prefix:
        where = [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        purelib = subprocess.run(where, check=True, capture_output=True, text=True).stdout.strip()
        lines = [f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()]
        Path(purelib, "outer_environment.pth").write_text("".join(lines))
    return python


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _best_val_record(workdir: Path) -> dict:
    """The validation record of the step the run's best checkpoint holds (its summary says which)."""
    best_step = json.loads((workdir / "summary.json").read_text())["best_step"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["step"] == best_step and "val/accuracy" in r]
    return record


@pytest.mark.slow
def test_installed_package_evaluates_and_predicts_with_a_run_of_an_older_version(tmp_path):
    # The build runs in a copy of the sources: setuptools writes build/ and *.egg-info beside them.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "fer_flax", source / "fer_flax", ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, workdir)
    shutil.rmtree(source / "fer_flax" / "bundled", ignore_errors=True)  # the repository's own, if any
    bundle.build(str(workdir), source / "fer_flax" / "bundled", dtype="float32", announce=lambda *_: None)
    # fer_flax alone goes into the venv, by the pip it sees (this environment's).
    venv = tmp_path / "venv"
    python = _make_venv(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing of it on the import path
    elsewhere.mkdir()
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check", "-q"]
    # Without isolation where this environment can build the wheel itself; otherwise pip fetches
    # the backend pyproject.toml names.
    if _run([python, "-c", _CAN_BUILD], elsewhere, env).stdout.strip() == "True":
        pip.append("--no-build-isolation")
    _run([*pip, str(source)], elsewhere, env)

    where = _run([python, "-c", "import fer_flax; print(fer_flax.__file__)"], elsewhere, env).stdout
    installed = Path(where.strip()).resolve()
    assert installed.is_relative_to(venv.resolve()), installed
    assert not installed.is_relative_to(REPO), installed

    assert (installed.parent / "bundled" / "weights.msgpack").is_file()
    report_path = tmp_path / "report.json"
    _run([python, "-m", "fer_flax.evaluate", f"--workdir={workdir}", f"--out={report_path}"], elsewhere, env)
    report = json.loads(report_path.read_text())
    recorded = _best_val_record(OLD_RUN)
    # The best checkpoint on the run's own validation faces, as in training: the same predictions.
    assert report["split"] == "val" and report["tta"] == "none"
    assert report["checkpoint_step"] == recorded["step"]
    assert report["num_examples"] == recorded["val/num_examples"]
    assert report["accuracy"] == recorded["val/accuracy"]
    assert report["confusion_matrix"] == recorded["val/confusion"]
    assert report["nll"] == pytest.approx(recorded["val/loss"], rel=1e-4)

    # A validation face of a class the run recalled completely (every face of it classified right)
    # must be classified as that class by predict, with the run's own test-time augmentation (none:
    # its version had no `eval_tta` and evaluated without).
    data = json.loads((OLD_RUN / "config.json").read_text())["config"]["data"]
    val = generate_synthetic(0, data["synthetic_val"], 0, seed=data["synthetic_seed"])["val"]
    confusion = np.asarray(recorded["val/confusion"])
    recalled = next(c for c in range(len(CLASS_NAMES)) if confusion[c, c] == confusion[c].sum() > 0)
    Image.fromarray(val.images[list(val.labels).index(recalled)]).save(tmp_path / "face.png")
    printed = _run(
        [python, "-m", "fer_flax.predict", f"--workdir={workdir}", "--format=json", tmp_path / "face.png"],
        elsewhere,
        env,
    ).stdout
    (result,) = json.loads(printed)
    (face,) = result["faces"]
    assert face["label"] == CLASS_NAMES[recalled]
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)

    # No workdir: the bundled model, the same weights (stored in float32), the same probabilities.
    command = [python, "-m", "fer_flax.predict", "--format=json", tmp_path / "face.png"]
    (result,) = json.loads(_run(command, elsewhere, env).stdout)
    (bundled_face,) = result["faces"]
    for name, p in face["probabilities"].items():
        assert bundled_face["probabilities"][name] == pytest.approx(p, abs=1e-6)

    # The Python API of the installed package, with no workdir either: the same face, the same answer.
    api = (
        "import json, sys; from fer_flax import Recognizer; "
        "print(json.dumps([f.to_json() for f in Recognizer().predict(sys.argv[1])]))"
    )
    (api_face,) = json.loads(_run([python, "-c", api, tmp_path / "face.png"], elsewhere, env).stdout)
    assert api_face["label"] == bundled_face["label"]
    for name, p in bundled_face["probabilities"].items():
        assert api_face["probabilities"][name] == pytest.approx(p, abs=1e-6)
