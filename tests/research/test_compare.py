"""`python -m fer_flax.compare`: the numbers read from metrics.jsonl, and the page two runs of different
families give, opened in a real headless Chromium."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fer_flax.research import compare
from fer_flax.training import loop as train
from tests.helpers.browser import headless_chromium
from tests.helpers.trained_runs import tiny_config

# One worker trains the two runs the module's fixture shares.
pytestmark = pytest.mark.xdist_group("compare")
REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ from metrics.jsonl


def test_learning_curve_and_time_to_accuracy_by_hand():
    records = [
        {"step": 10, "train/seconds": 30.0, "train/epoch": 0.5},  # the first window: compilation too
        {"step": 20, "train/seconds": 5.0, "train/epoch": 1.0},
        {"step": 20, "val/accuracy": 0.55},
        {"step": 40, "train/seconds": 10.0, "train/epoch": 2.0},
        {"step": 40, "val/accuracy": 0.61},
        {"step": 40, "val/accuracy": 0.62},  # evaluated again (a resume): the last record counts
        {"step": 60, "train/seconds": 10.0},
        {"step": 60, "val/accuracy": 0.60, "selected/accuracy": 0.66},  # the EMA weights were kept
    ]
    curve = compare.learning_curve(records)
    assert curve == [
        {"step": 20, "train_seconds": 35.0, "accuracy": 0.55, "epoch": 1.0},
        {"step": 40, "train_seconds": 45.0, "accuracy": 0.62, "epoch": 2.0},
        {"step": 60, "train_seconds": 55.0, "accuracy": 0.66, "epoch": 3.0},
    ]
    assert compare.learning_curve(records, steps_per_epoch=40)[0]["epoch"] == 0.5  # config.json's
    reached = compare.time_to_accuracy(curve)
    assert reached == {
        "0.60": {"step": 40, "epoch": 2.0, "train_seconds": 45.0},
        "0.65": {"step": 60, "epoch": 3.0, "train_seconds": 55.0},
        "0.70": None,
    }
    assert compare.learning_curve([]) == [] and compare.time_to_accuracy([])["0.60"] is None


def test_a_folder_that_is_not_a_run_is_named_in_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    for folder, says in ((tmp_path / "notes", "not a training run"), (tmp_path / "gone", "no such folder")):
        with pytest.raises(FileNotFoundError) as error:
            compare.compare([str(folder)])
        assert str(error.value) == f"{folder}: {says}" + (" (no config.json in it)" if "run" in says else "")


# ------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[str]:
    """The tiny CNN and a micro ViT, trained on the same synthetic faces (2 evaluations each)."""
    root = tmp_path_factory.mktemp("compare_runs")
    vit = tiny_config()
    vit.model_name, vit.model.variant = "vit", "vit_micro"
    workdirs = []
    for name, config in (("cnn", tiny_config()), ("vit", vit)):
        train.train_and_evaluate(config, str(root / name))
        workdirs.append(str(root / name))
    return workdirs


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory) -> tuple[Path, str]:
    """The command's output folder and what it printed."""
    out = tmp_path_factory.mktemp("compare_report") / "report"
    done = subprocess.run(
        [sys.executable, "-m", "fer_flax.compare", *two_runs, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
def test_the_command_writes_the_table_and_the_numbers(report):
    out, printed = report
    assert "[1/2] cnn (cnn/tiny): evaluating" in printed and "[2/2] vit (vit/vit_micro)" in printed
    result = json.loads((out / "report.json").read_text())
    assert (result["split"], result["tta"]) == ("val", "flip")
    assert [r["name"] for r in result["runs"]] == ["cnn", "vit"]
    for run in result["runs"]:
        evaluation = run["evaluation"]
        assert evaluation["num_examples"] == 64 and evaluation["checkpoint_step"] in (2, 4)
        assert 0 <= evaluation["accuracy"] <= 1 and len(evaluation["per_class"]) == 7
        assert 0 < evaluation["gflops_per_image"] < 0.1 and run["num_params"] > 0
        assert [p["step"] for p in run["curve"]] == [2, 4] and run["train_seconds"] > 0
        assert set(run["time_to_accuracy"]) == {"0.60", "0.65", "0.70"}
    # The tiny CNN's forward pass, convolutions and head (tests/core/test_flops.py): 11.9 MFLOPs.
    assert result["runs"][0]["evaluation"]["gflops_per_image"] == pytest.approx(0.011872)
    table = (out / "report.md").read_text().splitlines()
    assert table[0].startswith("| run | model | params | GFLOPs/image |") and len(table[2:4]) == 2
    assert table[2].startswith("| cnn | cnn/tiny | 0.32M | 0.0119 |")
    assert sorted(os.listdir(out)) == ["report.html", "report.json", "report.md"]  # no temporary files


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(report):
    out, _ = report
    page = (out / "report.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained: nothing fetched
    browser = headless_chromium(height=2000)
    try:
        browser.get((out / "report.html").as_uri())
        rows = browser.find_elements("css selector", "table#runs tbody tr.run")
        cells = [[td.text for td in row.find_elements("tag name", "td")] for row in rows]
        assert [c[:2] for c in cells] == [["cnn", "cnn/tiny"], ["vit", "vit/vit_micro"]]
        for row in cells:
            assert re.fullmatch(r"0\.\d{4}", row[5]) and re.fullmatch(r"0\.\d{4}", row[7])  # acc., F1
            assert all(re.fullmatch(r"\d+:\d\d:\d\d|–", c) for c in row[9:]), row  # times, or not reached
        images = browser.find_elements("css selector", "figure img")
        assert len(images) == 4
        widths = [browser.execute_script("return arguments[0].naturalWidth", img) for img in images]
        assert all(w > 0 for w in widths), widths  # every embedded PNG decoded
    finally:
        browser.quit()


# ------------------------------------------------------------ the CPU-budget comparison's report

CPU_COMPARISON = REPO / "docs" / "cpu_comparison"
CPU_BUDGET_MODELS = [
    ["cnn", "cnn/cpu_fast"],
    ["resnet", "resnet/resnet18_half_s2"],
    ["beefy", "beefy/cpu"],
    ["googlenet", "googlenet/inception_v1_bn_tiny_s2"],
    ["vit", "vit/vit_cpu"],
]


def _markdown_accuracies(text: str) -> dict[str, str]:
    """Run name -> accuracy cell of a compare report.md table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    column = next(i for i, h in enumerate(header) if h.startswith("accuracy"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return {row[0]: row[column] for row in rows}


def test_the_cpu_comparison_report_shows_the_five_families_in_a_headless_browser():
    """The report of the five CPU-budget runs (benchmarks/cpu_comparison.sh), as docs/ shows it: a
    real browser reads the five families from its table with the accuracies of its report.md and of
    the README's "Model comparison" table, and decodes every figure."""
    page = CPU_COMPARISON / "report.html"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.read_text())
    accuracies = _markdown_accuracies((CPU_COMPARISON / "report.md").read_text())
    assert list(accuracies) == [name for name, _ in CPU_BUDGET_MODELS]
    readme = (REPO / "README.md").read_text().split("## Model comparison", 1)[1].split("\n## ", 1)[0]
    for name, accuracy in accuracies.items():
        assert re.fullmatch(r"0\.\d{4}", accuracy), (name, accuracy)
        assert re.search(rf"\b{re.escape(accuracy)}\b", readme), (name, accuracy)  # the README quotes it
    browser = headless_chromium(height=2000)
    try:
        browser.get(page.as_uri())
        rows = browser.find_elements("css selector", "table#runs tbody tr.run")
        cells = [[td.text for td in row.find_elements("tag name", "td")] for row in rows]
        assert [c[:2] for c in cells] == CPU_BUDGET_MODELS
        assert [c[5] for c in cells] == list(accuracies.values())
        images = browser.find_elements("css selector", "figure img")
        assert len(images) == 4
        widths = [browser.execute_script("return arguments[0].naturalWidth", img) for img in images]
        assert all(w > 0 for w in widths), widths
    finally:
        browser.quit()
