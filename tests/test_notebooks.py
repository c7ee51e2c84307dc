"""The notebooks run top to bottom with small settings and show what their prose says, and they are
stored without outputs, so that what is committed can never disagree with what the code produces.

Each notebook is executed by nbclient in a fresh kernel of this interpreter with ``GMVAE_NB_SMALL=1``
(tiny networks, a few epochs), in ``notebooks/`` as a user would run it. A probe cell appended to
the notebook prints, as JSON, the values that the checks below need from the kernel.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 (after the skip)
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = "01_quickstart.ipynb"
CUSTOM = "02_custom_model_and_guide.ipynb"
PPC = "03_posterior_predictive_checks.ipynb"
SKLEARN = "04_scikit_learn.ipynb"
PROBE = "PROBE "
TIMEOUT_S = 600  # per cell; a loaded 2-core machine is slow to import torch in a fresh kernel


def execute(name: str, probe: str) -> tuple[nbformat.NotebookNode, dict]:
    """Run notebook ``name`` with small settings; returns it with its outputs, and the JSON value
    of the expression ``probe`` evaluated in its kernel afterwards."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(f"import json\nprint({PROBE!r} + json.dumps({probe}))")
    )
    # An empty search path leaves only ipykernel's own kernel, which runs this interpreter: a
    # "python3" kernelspec installed elsewhere may point at a Python without pyro_gmvae.
    kernel = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    client = nbclient.NotebookClient(
        nb,
        km=kernel,
        kernel_name="python3",
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
    )
    # One thread: the tiny models gain nothing from more, and on a busy machine competing threads
    # make them many times slower (as in conftest.py).
    small = {"GMVAE_NB_SMALL": "1", "GMVAE_NB_DATA": "digits", "OMP_NUM_THREADS": "1"}
    client.execute(env=os.environ | small)
    text = stream_text(nb.cells[-1])
    assert text.startswith(PROBE), text
    return nb, json.loads(text.removeprefix(PROBE))


def stream_text(cell: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == name)


def all_text(nb: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(stream_text(cell, name) for cell in nb.cells if cell.cell_type == "code")


def n_images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )


# -------------------------------------------------------------------------------- committed state
def test_the_notebooks_are_the_four_that_the_tests_run():
    expected = [QUICKSTART, CUSTOM, PPC, SKLEARN]
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(expected)


@pytest.mark.parametrize("name", [QUICKSTART, CUSTOM, PPC, SKLEARN])
def test_committed_notebooks_are_valid_and_have_no_outputs(name):
    """Outputs are never committed: stale ones would show results the code no longer gives.
    Strip them with ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    with_outputs = [i for i, cell in enumerate(nb.cells) if cell.get("outputs")]
    counted = [i for i, cell in enumerate(nb.cells) if cell.get("execution_count") is not None]
    assert not with_outputs and not counted, f"{name}: cells {with_outputs or counted} have outputs"
    assert "widgets" not in nb.metadata  # widget state is output too
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # The small settings the tests use must be the notebook's own switch.
    assert 'os.environ.get("GMVAE_NB_SMALL") == "1"' in nb.cells[1].source


# ----------------------------------------------------------------------------------- execution
def test_quickstart_trains_clusters_scores_and_round_trips():
    nb, probe = execute(
        QUICKSTART,
        '{"accuracy": scores["accuracy"], "last_epoch": history[-1], "epochs": len(history),'
        ' "evaluated": result["accuracy"], "round_trip": bool(same), "small": SMALL}',
    )
    assert probe["small"]
    assert probe["epochs"] == 4  # 1 pretraining + 1 anchor + 2 SVI epochs in small mode
    assert probe["last_epoch"]["phase"] == "svi"
    # The scores printed after training, the last epoch's record and evaluate() describe one model.
    assert 0.0 < probe["accuracy"] <= 1.0
    assert probe["accuracy"] == probe["last_epoch"]["accuracy"] == probe["evaluated"]
    out = all_text(nb)
    assert f"accuracy: {probe['accuracy']:.3f}" in out
    assert "the reloaded model gives the same clusters and codes: True" in out
    assert probe["round_trip"]
    assert "phase=svi" in all_text(nb, "stderr")  # the progress bar, across the phases
    # training curves, confusion matrix, samples, latent space, reconstructions
    assert n_images(nb) >= 5


def test_custom_model_and_guide_marginalise_y_exactly():
    nb, probe = execute(
        CUSTOM,
        '{"enumerated_exact": bool(enumerated_exact), "marginal_exact": bool(marginal_exact),'
        ' "y_shape": list(y_value.shape), "rows": rows, "svi_losses": losses, "K": K}',
    )
    # The loss of TraceEnum_ELBO equals the sum over clusters written in the notebook, both guides.
    assert probe["enumerated_exact"] and probe["marginal_exact"]
    out = all_text(nb)
    assert (
        "enumerated guide: TraceEnum_ELBO equals the explicit sum over all K clusters: True" in out
    )
    assert "marginal guide: TraceEnum_ELBO equals the explicit sum over all K clusters: True" in out
    # y takes all K values at once under enumeration
    assert probe["y_shape"] == [probe["K"], 1]
    assert "y enumerated, not sampled: True" in out
    # Five versions and the EM baseline in the table, with sensible numbers.
    versions = [row["version"] for row in probe["rows"]]
    assert len(versions) == 6 and all(v in out for v in versions)
    for row in probe["rows"][:-1]:
        assert math.isfinite(row["ELBO"]) and math.isfinite(row["log p(x)"]), row
        # log p(x) (importance weighted, 200 samples) bounds the ELBO from above, up to noise
        assert row["log p(x)"] >= row["ELBO"] - 0.5, row
        assert 0.0 < row["accuracy"] <= 1.0
    assert all(math.isfinite(loss) for loss in probe["svi_losses"])
    assert n_images(nb) >= 1  # the latent space


def test_posterior_predictive_checks_flag_the_misspecified_models():
    nb, probe = execute(
        PPC,
        '{"statistics": [[s.name, s.predictive] for s in report.statistics],'
        ' "grey": [bool(grey_variance.flagged), grey_variance.direction()],'
        ' "shifted": [bool(shifted_loglik.flagged), shifted_loglik.direction()]}',
    )
    out = all_text(nb)
    assert "verdict" in out  # the report's table
    statistics = probe["statistics"]
    names = {name for name, _ in statistics}
    assert {"intensity_mean", "feature_mean", "feature_variance", "loglik"} <= names
    # One figure per statistic, then the grey-level variance and two checks of the shifted data.
    assert n_images(nb) == len(statistics) + 3
    # Coin-flip replicates vary more than grey levels: the Bernoulli likelihood on grey digits fails.
    assert probe["grey"] == [True, "below"]
    assert "flagged: True, observed below the replicates" in out
    # Shifted held-out images are far less likely than the training images.
    assert probe["shifted"] == [True, "below"]


def test_scikit_learn_pipeline_clusters_and_chooses_k():
    nb, probe = execute(
        SKLEARN,
        '{"small": SMALL, "accuracy": scores["accuracy"], "ks": [row["k"] for row in'
        ' selection.table], "recommended": selection.recommended, "refitted":'
        ' pipe.named_steps["gmvae"].n_clusters, "chosen": chosen.n_clusters}',
    )
    assert probe["small"]
    assert 0.0 < probe["accuracy"] <= 1.0
    assert probe["ks"] == [2, 3, 4, 5, 6]
    assert probe["recommended"] in probe["ks"]
    assert probe["refitted"] == probe["chosen"] == probe["recommended"]
    out = all_text(nb)
    assert "probabilities sum to 1: True" in out
    assert f"recommended K = {probe['recommended']}: the smallest K" in out  # the rule, in words
    assert "not used to choose" in out
    assert n_images(nb) == 1  # the selection figure
