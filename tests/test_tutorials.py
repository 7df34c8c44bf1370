"""
The tutorials in ``docs/tutorials/`` run as written. Each notebook is executed top to bottom
with ``nbclient`` in a fresh Jupyter kernel of this interpreter (so of ``.venv`` under
``make test``), one thread, at its small CPU size. Its last cell checks what the notebook
computed and prints the results; the test reads them back and checks them again. The notebooks
are stored without outputs.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NAMES = ("render_and_backprop", "fit_your_capture", "compare_renderers", "implicitron")
KERNEL_NAME = "dvr-tutorials"
RESULT_MARKER = "TUTORIAL CHECKS PASSED"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def read_notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)


def write_kernel_spec(folder: Path, tmp_dir: Path) -> None:
    """A kernel spec that starts this interpreter's ipykernel, one thread, small tutorials."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dvr_plugin tutorials",
        "language": "python",
        "env": {
            "OMP_NUM_THREADS": "1",  # small tensors on a shared 2-core machine
            "MKL_NUM_THREADS": "1",
            "DVR_TUTORIAL_FULL": "0",
            "TMPDIR": str(tmp_dir),  # the notebooks' working folders
            "IPYTHONDIR": str(folder / "ipython"),
        },
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))


def execute(name: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run a tutorial in ``docs/tutorials`` (its folder is the working folder, as in Jupyter)."""
    jupyter = tmp_path / "jupyter"
    work = tmp_path / "work"
    work.mkdir()
    write_kernel_spec(jupyter, work)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
    notebook = read_notebook(name)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{name}.ipynb failed:\n{ANSI_ESCAPE.sub('', str(error))[-4000:]}")
    return notebook


def printed_results(notebook: nbformat.NotebookNode) -> dict:
    """The ``tutorial_results`` dict the last code cell printed after :data:`RESULT_MARKER`."""
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    text = "".join(out.get("text", "") for out in last.outputs if out.output_type == "stream")
    assert RESULT_MARKER in text, f"the checks cell printed no results: {text!r}"
    return ast.literal_eval(text.split(RESULT_MARKER, 1)[1].strip())


def test_tutorials_are_listed_and_stored_without_outputs():
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        notebook = read_notebook(name)
        nbformat.validate(notebook)
        assert notebook.metadata["kernelspec"]["name"] == "python3", name
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), name
        # teaching material: every notebook explains itself and ends with its checks
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), name
        assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 5, name
        assert RESULT_MARKER in "".join(cell.source for cell in code), name


@pytest.mark.slow
def test_render_and_backprop(tmp_path, monkeypatch):
    results = printed_results(execute("render_and_backprop", tmp_path, monkeypatch))
    assert results["mask_iou"] > 0.9
    assert results["median_depth_gap"] < 1e-3  # DVR's depth is the rasteriser's zbuf
    first, last = results["field_loss"]
    assert last < first
    for key in ("rotation_error_degrees", "translation_error"):
        initial, final = results[key]
        assert final < 0.25 * initial, (key, initial, final)


@pytest.mark.slow
def test_fit_your_capture(tmp_path, monkeypatch):
    results = printed_results(execute("fit_your_capture", tmp_path, monkeypatch))
    assert results["held_out_mask_iou"] > 0.5
    assert 0.0 < results["chamfer_l1"] < 0.15
    assert 0.0 < results["observed_chamfer_l1"] < 0.15
    # the notebook's working folder went to the test's temporary folder, not the checkout
    assert any((tmp_path / "work").glob("dvr_fit_your_capture_*/fit/checkpoint.pt"))


@pytest.mark.slow
def test_compare_renderers(tmp_path, monkeypatch):
    results = printed_results(execute("compare_renderers", tmp_path, monkeypatch))
    soft = results["volume_soft_mask_iou"]  # 16, 64, 256 samples
    sharp = results["volume_sharp_depth_error"]
    assert soft[0] > soft[1] > soft[2]
    assert sharp[0] > sharp[1] > sharp[2]
    assert results["dvr_mask_iou"] > 0.5 and 0.0 < results["volume_mask_iou"] <= 1.0


@pytest.mark.slow
def test_implicitron(tmp_path, monkeypatch):
    pytest.importorskip("omegaconf", reason="Implicitron needs omegaconf (requirements.txt)")
    results = printed_results(execute("implicitron", tmp_path, monkeypatch))
    assert results["mask_iou_after"] > results["mask_iou_before"] + 0.25
    assert results["mask_iou_after"] > 0.6
