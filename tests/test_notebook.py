"""notebooks/quickstart.ipynb runs headless, top to bottom, with its smoke settings; a smoke run
is called a pipeline check, and the k-NN bars start at zero."""

import os

import pytest
from conftest import xla_flags

pytestmark = pytest.mark.slow  # runs the quickstart notebook (tests/README.md)

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") and \
            not os.environ.get("MDISTILL_FMNIST_DIR"):
        pytest.skip("Fashion-MNIST IDX files absent (the notebook would fetch TFDS's over the network)")
    monkeypatch.setenv("XLA_FLAGS", xla_flags(1))  # one device, as on Colab's CPU runtime
    monkeypatch.setenv("MDISTILL_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MDISTILL_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MAE_CHECKPOINT", str(tmp_path / "absent.pth"))
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell('print("k-NN axis from", knn_axes.get_xlim()[0])'))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert outputs.count("step 6/6") >= 3  # teacher, DMAE student, its MAE twin
    for row in ("raw pixels", "random mu/4", "teacher (MAE, xs/4)", "student alone (MAE)", "student (DMAE)"):
        assert f"{row:<22} k-NN top-1" in outputs, row
    # 6 steps check the pipeline: it says so and draws no conclusion, whatever the numbers
    assert "pipeline check: teacher 6 of 800, students 6 of 400 steps" in outputs
    assert "no conclusion is drawn" in outputs
    for word in ("pays", "ahead of", "behind", "level with"):
        assert word not in outputs, word
    assert "k-NN axis from 0.0" in outputs  # bars start at zero
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # data, k-NN bars, three reconstruction grids, loss curves
