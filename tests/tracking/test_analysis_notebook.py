"""Runs notebooks/analysis.ipynb headless, as a user would, against a fake sweep."""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import oversight

REPO = Path(oversight.__file__).resolve().parents[1]

# Appended to the notebook: which Python ran it, and what the metrics figure holds.
PROBE = """
import sys
import matplotlib
import matplotlib.pyplot as plt
print(sys.prefix)
print(matplotlib.get_backend())
print([(ax.get_title(), len(ax.lines)) for ax in plt.gcf().axes if ax.get_visible()])
"""


def test_analysis_notebook_runs_headless_against_a_sweep(fake_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_RUNS", str(fake_sweep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel starts in tmp_path, so it finds `oversight` whether or not it is pip-installed.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    assert "parameters" in next(c for c in nb.cells if c.cell_type == "code").metadata["tags"]
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))

    # "python3" resolves to the kernelspec in this interpreter's prefix (ipykernel ships it under
    # share/jupyter/kernels), and jupyter_client runs it with sys.executable.
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def text(cell):
        return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)

    prefix, backend, panels = text(nb.cells[-1]).splitlines()
    assert prefix == sys.prefix
    assert backend.lower() == "agg"
    assert panels == "[('train/loss', 2), ('eval/acc', 2)]"
    final, results = text(nb.cells[-4]), text(nb.cells[-2])
    assert "optim.lr" in final and "0.64" in final  # the swept value and run 1's last eval/acc
    assert "ci_low" in results and "optim.warmup" not in results
