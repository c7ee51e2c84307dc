"""Clustering benchmark: pyro_gmvae's default recipe against N2D, KMeans and Gaussian mixtures.

For each dataset and seed, trains pyro_gmvae exactly as ``gmvae train`` would (``train_run`` with
the library's defaults, K = the number of classes, any recipe flag overridable here) and fits, on
the same data, split and seed in the same process, the baselines:

- ``n2d``: N2D's recipe with N2D's settings (McConville et al. 2019; what is and is not N2D:
  :func:`run_n2d`): an autoencoder d-500-500-2000-10 pretrained as pyro_gmvae pretrains but on the
  plain data, a 10-d UMAP of its codes (20 neighbours, ``min_dist=0``), and a full-covariance
  GaussianMixture with scikit-learn's defaults on that map;
- ``kmeans-raw`` / ``kmeans-pca50``: scikit-learn KMeans, ``n_init=10``, on the pixels (or table
  columns) or on 50 principal components (PCA fitted on the training rows);
- ``gmm-diag-raw``: scikit-learn GaussianMixture with diagonal covariances on the pixels (full
  784x784 covariances are singular on MNIST's constant border pixels, and slow) or columns;
- ``gmm-full-pca50``: GaussianMixture with full covariances on 50 principal components (images);
- ``gmm-full-raw``: GaussianMixture with full covariances on the columns (tables).

scikit-learn's defaults otherwise (GaussianMixture: one k-means initialisation, ``reg_covar=1e-6``).
Images (``mnist8k``, ``digits``) get ``pyro_gmvae n2d kmeans-raw kmeans-pca50 gmm-diag-raw
gmm-full-pca50``; the tables ``iris``, ``wine`` and ``breast_cancer`` (scikit-learn's bundled ones,
standardized by ``load_data`` as ``gmvae train`` standardizes a table, trained with ``--likelihood
gaussian``) get ``pyro_gmvae n2d kmeans-raw gmm-diag-raw gmm-full-raw``; ``--methods`` runs the
methods it names on every dataset.

Every pyro_gmvae run is also scored at its start: the clusters of the training rows that its
mixture start found on the pretrained codes (the checkpoint's ``assignments``), as
``start_accuracy`` and ``start_nmi``, so that a table shows what the GMVAE's own training adds to
its start; ``start_source`` and ``start_scores`` say which map the start kept and by what
scores (from the run's records).

Labels are used for scoring only. With ``--heldout-fraction f`` every method is fitted on the same
random ``1 - f`` of the rows (``Dataset.split`` with the run's seed) and also scored on the unseen
rest, clusters assigned by the fitted model alone.

Prints the machine and the tables (mean +- std over seeds and worst seed of accuracy and NMI, mean
wall time per run; pyro_gmvae's start against its end); writes every per-seed result to
``OUT/results.json`` (after each run, so an interrupted benchmark keeps what it measured, and
``--resume`` continues it) and the tables as Markdown to ``--markdown``. See
``benchmarks/README.md`` for the command lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import sklearn
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from pyro_gmvae import GMVAE, Pretrain, Recipe, Trainer
from pyro_gmvae.checkpoints import CHECKPOINT_FILE, load_checkpoint
from pyro_gmvae.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
)
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import Dataset
from pyro_gmvae.files import atomic_write_bytes, atomic_write_text
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.rng import seed_everything
from pyro_gmvae.runs import train_run
from pyro_gmvae.train import TrainingDiverged, read_metrics

from _paths import resolve_mnist8k  # benchmarks/_paths.py, beside this script

PYRO_GMVAE = "pyro_gmvae"
N2D = "n2d"
#: What each kind of data is compared with when --methods is not given.
IMAGE_BASELINES = ("kmeans-raw", "kmeans-pca50", "gmm-diag-raw", "gmm-full-pca50")
TABLE_BASELINES = ("kmeans-raw", "gmm-diag-raw", "gmm-full-raw")
IMAGE_BASELINES = (N2D, *IMAGE_BASELINES)
TABLE_BASELINES = (N2D, *TABLE_BASELINES)
BASELINES = tuple(dict.fromkeys(IMAGE_BASELINES + TABLE_BASELINES))
#: scikit-learn's bundled tables with class labels, by their --datasets name.
TABLES = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}
PCA_COMPONENTS = 50
#: N2D's settings (github.com/rymc/n2d, run.sh for MNIST): the autoencoder's hidden layers and
#: code size, and its UMAP's dimensions and neighbours (min_dist 0).
N2D_HIDDEN = (500, 500, 2000)
N2D_LATENT = 10
N2D_COMPONENTS = 10
N2D_NEIGHBORS = 20
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """What the timings were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "commit": commit,
        "numba_threading_layer": os.environ.get("NUMBA_THREADING_LAYER"),
    }


def format_machine(machine: dict[str, Any]) -> str:
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['cores_available']} available), torch threads {machine['torch_threads']}, "
        f"GPU {machine['gpu'] or 'none'}; Python {machine['python']}, torch {machine['torch']}, "
        f"pyro {machine['pyro']}, scikit-learn {machine['scikit-learn']}; "
        f"pyro_gmvae commit {machine['commit']}"
    )


# -------------------------------------------------------------------------------------- runs


def resolve_spec(name: str) -> str:
    """A ``--datasets`` entry as a ``--data`` spec: ``mnist8k`` is the shared 8,000 digits."""
    if name != "mnist8k":
        return name
    path = resolve_mnist8k()
    if path is None:
        raise SystemExit(
            "benchmark: mnist8k.npz not found (looked in ../shared/data/ from the repository "
            "root); set PYRO_GMVAE_MNIST8K to its path or leave mnist8k out of --datasets"
        )
    return str(path)


def table_spec(name: str, folder: Path) -> str:
    """scikit-learn's table ``name`` as a ``.npz`` in ``folder`` (``X`` as scikit-learn gives it,
    ``y`` the classes) that ``gmvae train`` reads; ``load_data`` standardizes it, as it does any
    table. Written once, atomically, so a resumed benchmark trains on the same file."""
    path = folder / f"{name}.npz"
    if not path.exists():
        x, y = TABLES[name](return_X_y=True)
        buffer = io.BytesIO()
        np.savez(buffer, X=x.astype(np.float64), y=y.astype(np.int64))
        atomic_write_bytes(path, buffer.getvalue())
    return str(path)


def n_classes(dataset: Dataset) -> int | None:
    """How many classes the labels name (None without labels): the K each dataset is run with."""
    return None if dataset.labels is None else len(np.unique(dataset.labels))


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """The rows train_run trains on and the ones it holds out, for the same fraction and seed."""
    return dataset.split(fraction, seed=seed) if fraction > 0 else (dataset, None)


def scores(data: Dataset | None, clusters: np.ndarray | None) -> dict[str, float] | None:
    if data is None or data.labels is None or clusters is None:
        return None
    return clustering_scores(data.labels, clusters)


def run_baseline(
    method: str, train: Dataset, heldout: Dataset | None, n_clusters: int, seed: int
) -> dict[str, Any]:
    """Fit ``method`` on ``train`` and score it there and on ``heldout`` (predicted, not refitted)."""
    x_train = train.x
    x_heldout = None if heldout is None else heldout.x
    if method.endswith("pca50"):
        pca = PCA(min(PCA_COMPONENTS, *x_train.shape), random_state=seed).fit(x_train)
        x_train = pca.transform(x_train)
        x_heldout = None if x_heldout is None else pca.transform(x_heldout)
    if method.startswith("kmeans"):
        fitted = KMeans(n_clusters, n_init=10, random_state=seed).fit(x_train)
    else:
        covariance = "diag" if method.startswith("gmm-diag") else "full"
        fitted = GaussianMixture(n_clusters, covariance_type=covariance, random_state=seed)
        fitted.fit(x_train)
    train_clusters = fitted.predict(x_train)
    heldout_clusters = None if x_heldout is None else fitted.predict(x_heldout)
    return {
        "train": scores(train, train_clusters),
        "heldout": scores(heldout, heldout_clusters),
    }


def run_n2d(config: RunConfig, train: Dataset, heldout: Dataset | None) -> dict[str, Any]:
    """N2D (McConville et al. 2019, "N2D: (Not Too) Deep Clustering via Clustering the Local
    Manifold of an Autoencoded Embedding"; github.com/rymc/n2d) on ``train``, scored there and on
    ``heldout``, with the pyro_gmvae run ``config`` of the same dataset and seed.

    As N2D does:

    - an autoencoder d-500-500-2000-10 with ReLU between its layers, trained on the plain data (no
      moved copies: ``augment_rotation=0``, ``augment_shift=0``) by Adam, learning rate 1e-3,
      minibatches of 256;
    - a 10-d UMAP embedding of the codes, 20 neighbours, ``min_dist=0``, Euclidean, umap-learn's
      defaults otherwise;
    - a GaussianMixture with full covariances and scikit-learn's defaults (free weights, one k-means
      initialisation, ``reg_covar=1e-6``) on the embedding; each row's cluster is its most probable
      component.

    Not as N2D does:

    - the network is the library's (``GMVAE(ModelConfig(hidden=(500, 500, 2000), latent_dim=10))``)
      and trains as pyro_gmvae's ``Pretrain`` phase does: the loss is -log p(x | z = the mean of
      q(z|x)) with the run's likelihood (Bernoulli for images, where N2D's Keras autoencoder has a
      linear output and a squared error; Gaussian with a learned scale per column for tables),
      gradients clipped at the run's ``--clip-norm`` (10); and for the pyro_gmvae run's pretraining
      epochs (300, at most ``--pretrain-steps`` 9600 steps: 300 epochs on mnist8k and digits),
      where N2D trains for 1000 epochs on all 70,000 MNIST digits;
    - the random state is the run's seed, where N2D fixes 0 everywhere;
    - the code and the embedding have 10 dimensions on every dataset. N2D sets both to its number of
      clusters (10 on MNIST; 6 on its 6-class HAR), so on the tables (2 or 3 classes) this is N2D's
      MNIST setting, not what its rule would choose;
    - held-out rows (N2D has none) are mapped by the fitted UMAP's ``transform`` and assigned by
      the fitted mixture, with nothing refitted.

    On images the network, its initial weights (seeded as ``gmvae train`` seeds) and its
    pretraining are pyro_gmvae's own but for the moved copies; the ``umap`` start of pyro_gmvae then
    differs only in its mixture (weights held uniform, 10 restarts, ``reg_covar=1e-4``).
    """
    import umap  # numba compiles on first use: only when n2d runs

    pyro.clear_param_store()
    settings = dataclasses.replace(config.train, augment_rotation=0.0, augment_shift=0.0)
    seed_everything(settings.seed)  # the weights, as train_run draws the pyro_gmvae run's
    model = GMVAE(
        ModelConfig(
            clusters=config.model.clusters,
            hidden=N2D_HIDDEN,
            latent_dim=N2D_LATENT,
            likelihood=config.model.likelihood,
            n_features=train.n_features,
            image_shape=train.image_shape,
        )
    )
    pretrain = Pretrain(settings.pretrain_epochs, max_steps=settings.pretrain_steps or None)
    # Trainer.run, not fit: fit stops quietly on Ctrl-C, which would score a half-trained network.
    trainer = Trainer(model, train.x, settings, recipe=Recipe([pretrain]), progress=False)
    history = trainer.run()
    reducer = umap.UMAP(
        n_components=N2D_COMPONENTS,
        n_neighbors=N2D_NEIGHBORS,
        min_dist=0.0,
        metric="euclidean",
        random_state=settings.seed,
    )
    with warnings.catch_warnings():  # "n_jobs value 1 overridden to 1 by setting random_state"
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        embedding = reducer.fit_transform(model.encode(train.x))
    mixture = GaussianMixture(
        config.model.clusters, covariance_type="full", random_state=settings.seed
    ).fit(embedding)
    heldout_clusters = None
    if heldout is not None:
        heldout_clusters = mixture.predict(reducer.transform(model.encode(heldout.x)))
    return {
        "train": scores(train, mixture.predict(embedding)),
        "heldout": scores(heldout, heldout_clusters),
        "epochs": trainer.epoch,
        "loss": history[-1]["loss"] if history else None,
    }


def start_kept(run_dir: Path) -> dict[str, Any]:
    """What the run's records say of its mixture start: ``start_source``, the map or data it
    clustered (``codes``, ``data``, ...), and ``start_scores``, the scores it chose by
    (empty where it had no choice); both None where the run made no start."""
    for record in read_metrics(run_dir):
        if "start" in record:
            return {
                "start_source": record["start"],
                "start_scores": record.get("start_scores", {}),
            }
    return {"start_source": None, "start_scores": None}


def run_gmvae(config: RunConfig, run_dir: Path, train: Dataset) -> dict[str, Any]:
    """Train with ``train_run`` (what ``gmvae train`` does) and collect its scores, and those of
    its start: the cluster of each training row that the mixture start found (the run's
    checkpoint's ``assignments``, in the order of ``train``'s rows), scored against ``train``'s
    labels; None where there was no start (no pretraining) or there are no labels."""
    pyro.clear_param_store()  # nothing of the previous run may leak into this one
    result = train_run(config, run_dir, force=True, progress=False, plots=False)
    assignments = load_checkpoint(run_dir / CHECKPOINT_FILE)["assignments"]
    start = None if assignments is None else scores(train, assignments.cpu().numpy())
    return {
        "train": result.get("train"),
        "heldout": result.get("heldout"),
        "start_accuracy": None if start is None else start["accuracy"],
        "start_nmi": None if start is None else start["nmi"],
        **start_kept(run_dir),
        "epochs": result.get("epochs"),
        "loss": result.get("loss"),
    }


# ------------------------------------------------------------------------------------ tables


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _worst(values: list[float]) -> str:
    return f"{min(values):.3f}" if values else "-"


def summary_rows(records: list[dict[str, Any]], heldout: bool) -> tuple[list[str], list[list[str]]]:
    """One row per dataset and method, in the order they were run."""
    header = ["dataset", "method", "seeds", "accuracy", "worst acc", "NMI", "worst NMI", "ARI"]
    if heldout:
        header += ["held-out acc", "worst held-out", "train - held-out"]
    header += ["time per run (s)"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    rows = []
    for (dataset, method), runs in groups.items():
        ok = [r for r in runs if r["error"] is None and r["train"] is not None]
        failed = len(runs) - len(ok)
        acc = [r["train"]["accuracy"] for r in ok]
        nmi = [r["train"]["nmi"] for r in ok]
        ari = [r["train"]["ari"] for r in ok]
        row = [
            dataset,
            method,
            f"{len(ok)}" + (f" ({failed} failed)" if failed else ""),
            _mean_std(acc),
            _worst(acc),
            _mean_std(nmi),
            _worst(nmi),
            f"{np.mean(ari):.3f}" if ari else "-",
        ]
        if heldout:
            pairs = [(r["train"]["accuracy"], r["heldout"]["accuracy"]) for r in ok if r["heldout"]]
            held = [h for _, h in pairs]
            gaps = [t - h for t, h in pairs]
            row += [
                _mean_std(held),
                _worst(held),
                f"{np.mean(gaps):+.3f} (max {max(gaps):+.3f})" if gaps else "-",
            ]
        row.append(f"{np.mean([r['seconds'] for r in runs]):.1f}")
        rows.append(row)
    return header, rows


def start_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per dataset of pyro_gmvae's runs: the accuracy and NMI of its mixture start (the
    clusters the Anchor phase begins from) and of the trained model, on the training rows, and
    on how many seeds the end is at least as accurate as the start."""
    header = ["dataset", "seeds", "start acc", "final acc", "final >= start"]
    header += ["start NMI", "final NMI"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["method"] == PYRO_GMVAE and r["error"] is None and r["train"] is not None:
            if r.get("start_accuracy") is not None:
                groups.setdefault(r["dataset"], []).append(r)
    rows = []
    for dataset, runs in groups.items():
        start = [r["start_accuracy"] for r in runs]
        final = [r["train"]["accuracy"] for r in runs]
        kept = sum(f >= s for s, f in zip(start, final, strict=True))
        rows.append(
            [
                dataset,
                str(len(runs)),
                _mean_std(start),
                _mean_std(final),
                f"{kept} of {len(runs)}",
                _mean_std([r["start_nmi"] for r in runs]),
                _mean_std([r["train"]["nmi"] for r in runs]),
            ]
        )
    return header, rows


def render(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A plain fixed-width table, or a Markdown one."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def clusters_note(recipes: dict[str, Any]) -> str:
    """``K = 10 (mnist8k, digits), 3 (iris)``: the K of each dataset, from the recipes."""
    by_k: dict[int, list[str]] = {}
    for dataset, recipe in recipes.items():
        by_k.setdefault(recipe["model"]["clusters"], []).append(dataset)
    return "K = " + ", ".join(f"{k} ({', '.join(names)})" for k, names in by_k.items())


def markdown_report(
    records: list[dict[str, Any]],
    heldout: bool,
    machine: str,
    command: str,
    when: str,
    clusters: str = "",
) -> str:
    """The tables with what they mean, the machine(s) they ran on and the command(s) that made
    them."""
    header, rows = summary_rows(records, heldout)
    start_header, start = start_rows(records)
    starts = (
        f"{PYRO_GMVAE} at its start (the clusters of the training rows found by the mixture start on "
        f"the pretrained codes, from which the anchor epochs begin) and at its end, on the "
        f"training rows:\n\n{render(start_header, start, markdown=True)}\n\n"
        if start
        else ""
    )
    return (
        f"{render(header, rows, markdown=True)}\n\n"
        f"Accuracy: best one-to-one matching of the K clusters to the K classes (Hungarian"
        f"{'; ' + clusters if clusters else ''}); "
        f"mean ± standard deviation over seeds, and the worst seed. Time: wall-clock seconds "
        f"per run (training and scoring).\n\n"
        f"{starts}"
        f"{machine}\n\nRun on {when}.\n\n"
        f"Command:\n\n```\n{command}\n```\n"
    )


# -------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["mnist8k", "digits"],
        help=f"mnist8k, digits, {', '.join(TABLES)} (scikit-learn's tables), or any --data spec "
        "of gmvae train",
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ..., S-1)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="start the seeds here (F, ..., F+S-1), to split one benchmark over processes",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="print the table of these results.json files (from runs split over processes or "
        "machines) instead of running anything",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=[PYRO_GMVAE, *BASELINES],
        help=f"what to run on every dataset (default: {PYRO_GMVAE} and, on images, "
        f"{' '.join(IMAGE_BASELINES)}; on tables, {' '.join(TABLE_BASELINES)})",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.0,
        help="train on the rest and also score on this fraction of unseen rows",
    )
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS/OpenMP threads")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for results.json (default benchmarks/results/clustering-<time>)",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the table as Markdown here (default OUT/results.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the benchmark of OUT/results.json: the runs it holds (dataset, method, "
        "seed) are kept and not run again; refused where a dataset's recipe or "
        "--heldout-fraction differs from the one it was run with",
    )
    p.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep the pyro_gmvae run directories in OUT/runs (else a temp folder)",
    )
    # The recipe: gmvae train's own flags, suppressed unless given, so the defaults are the
    # library's. K is the number of classes of each dataset unless --clusters says otherwise;
    # tables get --likelihood gaussian unless it is given.
    for cls in (ModelConfig, TrainConfig):
        add_arguments(p, cls, suppress_defaults=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "seed"):
        parser.error("--seed is set per run; use --seeds S to run seeds 0..S-1")
    if args.merge:
        return merge(args.merge, args.markdown)
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads must be at least 1")
    if not 0 <= args.heldout_fraction < 1:
        parser.error("--heldout-fraction must be in [0, 1)")
    torch.set_num_threads(args.threads)
    # umap-learn's numba runs its parallel loops on OpenMP threads by default; once they have run
    # (the umap start, n2d's map), every later torch step of the process was 2-16x slower on the
    # 2-core box (digits anchor epochs 0.5-4 s instead of 0.25 s; see benchmarks/README.md).
    # numba's own thread pool does not interfere. Read when numba is first imported, which is
    # after this line (umap is imported where a map is made). NUMBA_THREADING_LAYER=omp measures
    # the default.
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = args.out or REPO / "benchmarks/results" / (
        "clustering-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    markdown_path = args.markdown or out / "results.md"
    command = shlex.join(["python", "benchmarks/clustering.py", *(argv or sys.argv[1:])])
    if "OMP_NUM_THREADS" in os.environ:  # the times depend on it
        command = f"OMP_NUM_THREADS={shlex.quote(os.environ['OMP_NUM_THREADS'])} {command}"
    machine = machine_info()
    print(format_machine(machine), flush=True)

    records: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "command": command,
        "date": when,
        "machine": machine,
        "heldout_fraction": args.heldout_fraction,
        "recipes": {},
        "runs": records,
    }
    if args.resume and (out / "results.json").exists():
        report = resumed(out / "results.json", report)
        records = report["runs"]
        print(f"resuming {out / 'results.json'}: {len(records)} runs kept", flush=True)
    done = {(r["dataset"], r["method"], r["seed"]) for r in records}
    scratch = tempfile.TemporaryDirectory(prefix="gmvae-benchmark-")
    runs_root = out / "runs" if args.keep_runs else Path(scratch.name)

    with scratch, threadpool_limits(args.threads):
        for name in args.datasets:
            table = name in TABLES
            spec = table_spec(name, out / "data") if table else resolve_spec(name)
            kind = "table" if table else None
            dataset = load_data(spec, kind=kind)
            label = Path(name).stem if name != "mnist8k" else name
            base = ModelConfig(clusters=n_classes(dataset) or ModelConfig().clusters)
            if dataset.kind == "table":
                base.likelihood = "gaussian"
            model_config = from_arguments(ModelConfig, args, base=base)
            methods = args.methods or [
                PYRO_GMVAE,
                *(TABLE_BASELINES if dataset.kind == "table" else IMAGE_BASELINES),
            ]
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                train, heldout = split(dataset, args.heldout_fraction, seed)
                config = RunConfig(
                    data=DataConfig(data=spec, kind=kind, heldout_fraction=args.heldout_fraction),
                    model=ModelConfig(**vars(model_config)),
                    train=from_arguments(TrainConfig, args, base=TrainConfig(seed=seed)),
                )
                recipe = json.loads(json.dumps(config.to_dict()))  # as results.json holds it
                saved = report["recipes"].setdefault(label, recipe)
                if _without_seed(saved) != _without_seed(recipe):
                    raise SystemExit(
                        f"benchmark: {out / 'results.json'} ran {label} with another recipe; "
                        "resume with the flags it was run with, or choose another --out"
                    )
                for method in methods:
                    if (label, method, seed) in done:
                        continue
                    record = {
                        "dataset": label,
                        "method": method,
                        "seed": seed,
                        "n_train": len(train),
                        "n_heldout": 0 if heldout is None else len(heldout),
                        "error": None,
                    }
                    start = time.perf_counter()
                    try:
                        if method == PYRO_GMVAE:
                            run_dir = runs_root / f"{label}-seed{seed}"
                            record |= run_gmvae(config, run_dir, train)
                            if not args.keep_runs:  # checkpoints of big networks add up
                                shutil.rmtree(run_dir)
                        elif method == N2D:
                            record |= run_n2d(config, train, heldout)
                        else:
                            record |= run_baseline(
                                method, train, heldout, model_config.clusters, seed
                            )
                    except TrainingDiverged as e:  # a failed seed counts, and is shown
                        record |= {"error": str(e), "train": None, "heldout": None}
                    except ValueError as e:  # so does a mixture that EM could not fit
                        if "ill-defined empirical covariance" not in str(e):
                            raise
                        record |= {"error": str(e), "train": None, "heldout": None}
                    record["seconds"] = time.perf_counter() - start
                    records.append(record)
                    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
                    print(_progress_line(record), file=sys.stderr, flush=True)

    print()
    print_tables(records, heldout=args.heldout_fraction > 0)
    earlier = report.get("earlier", [])
    machines = sorted({format_machine(r["machine"]) for r in earlier} | {format_machine(machine)})
    atomic_write_text(
        markdown_path,
        markdown_report(
            records,
            args.heldout_fraction > 0,
            "\n\n".join(machines),
            "\n".join(dict.fromkeys([*(r["command"] for r in earlier), command])),
            when,
            clusters_note(report["recipes"]),
        ),
    )
    print(f"\nper-seed results: {out / 'results.json'}; Markdown table: {markdown_path}")
    return 0


def resumed(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (of the benchmark beginning now) continuing the one saved in ``path``: its runs
    and recipes kept, its commands, dates and machines listed under ``earlier``."""
    saved = json.loads(path.read_text())
    if saved["heldout_fraction"] != report["heldout_fraction"]:
        raise SystemExit(
            f"benchmark: {path} was run with --heldout-fraction {saved['heldout_fraction']}; "
            "resume with it, or choose another --out"
        )
    earlier = saved.pop("earlier", [])
    earlier.append({k: saved[k] for k in ("command", "date", "machine")})
    return report | {"recipes": saved["recipes"], "runs": saved["runs"], "earlier": earlier}


def _without_seed(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe of ``report["recipes"]`` but its seed (that of its dataset's first seed run)."""
    return recipe | {"train": {k: v for k, v in recipe["train"].items() if k != "seed"}}


def print_tables(records: list[dict[str, Any]], heldout: bool) -> None:
    """The summary table and, where pyro_gmvae ran, its start against its end."""
    print(render(*summary_rows(records, heldout)))
    start_header, start = start_rows(records)
    if start:
        print(f"\n{PYRO_GMVAE}: its mixture start and its end, on the training rows")
        print(render(start_header, start))


def merge(paths: list[Path], markdown_path: Path | None) -> int:
    """One table from several ``results.json`` files; their machines and commands are listed."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    records = [r for report in reports for r in report["runs"]]
    heldout = any(report["heldout_fraction"] > 0 for report in reports)
    print_tables(records, heldout)
    if markdown_path is not None:
        where = sorted(
            {
                f"- {', '.join(sorted({r['method'] for r in report['runs']}))} on "
                f"{', '.join(sorted({r['dataset'] for r in report['runs']}))}: "
                + format_machine(report["machine"])
                for report in reports
            }
        )
        commands = "\n".join(sorted({report["command"] for report in reports}))
        when = max(report["date"] for report in reports)
        recipes = {k: v for report in reports for k, v in report["recipes"].items()}
        atomic_write_text(
            markdown_path,
            markdown_report(
                records,
                heldout,
                "Where each part ran:\n\n" + "\n".join(where),
                commands,
                when,
                clusters_note(recipes),
            ),
        )
    return 0


def _progress_line(record: dict[str, Any]) -> str:
    where = f"[{record['dataset']} seed {record['seed']}] {record['method']}"
    if record["error"] is not None:
        return f"{where}: FAILED: {record['error']}"
    if record["train"] is None:
        return f"{where}: {record['seconds']:.1f}s (no labels to score)"
    text = f"{where}: acc {record['train']['accuracy']:.3f} NMI {record['train']['nmi']:.3f}"
    if record.get("start_accuracy") is not None:
        text += f" (start acc {record['start_accuracy']:.3f}"
        if record.get("start_source"):
            text += f", {record['start_source']}"
        text += ")"
    if record["heldout"] is not None:
        text += f", held-out acc {record['heldout']['accuracy']:.3f}"
    return text + f" ({record['seconds']:.1f}s)"


if __name__ == "__main__":
    sys.exit(main())
