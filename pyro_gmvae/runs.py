"""A run directory, all of it: preparing it, locking it, the train/held-out split, the scaler,
training into it (:func:`train_run`, what ``gmvae train`` does), opening a finished run and loading
data the way it saw its own (for ``evaluate`` and ``ppc``), and writing reports into it.

A run directory holds ``config.json`` (the :class:`~pyro_gmvae.config.RunConfig`),
``metrics.jsonl`` (one JSON object per epoch), ``checkpoint.pt``, ``scaler.json`` for tables, and
``figures/``. Every file is written to a temporary file in the same directory, flushed and renamed
over the old one, so an interruption leaves the previous version intact. While a command writes
into a run it holds an advisory lock (``.lock``, ``flock``), which the operating system releases
when the process ends however it ends, so a second writer is refused and a dead one never blocks.

Nothing is created, replaced or deleted before every option and the data have been checked and the
model and its trainer built: a command that fails before training leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import CHECKPOINT_FILE, CONFIG_FILE
from .config import DistributedConfig, RunConfig
from .data import load_data
from .dataset import Dataset, ScaledRows, Scaler, check_min_rows
from .errors import CheckpointError, ConfigError, DataError, RunDirectoryError
from .files import atomic_write_text
from .metrics import class_accuracy, clustering_scores
from .model import GMVAE
from .ppc import PPC_FILE, REPORT_FILE, PPCReport
from .rng import seed_everything
from .train import METRICS_FILE, Trainer, read_metrics, resolve_device

SCALER_FILE = "scaler.json"
EVALUATION_FILE = "evaluation.json"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
#: What ``--force`` removes of an old run (and nothing else of the directory).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, SCALER_FILE, EVALUATION_FILE)
#: Options that may change when a run is resumed; every other one must match the saved run.
RESUMABLE = {"epochs", "steps", "device"}

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


# ----------------------------------------------------------------------------------- files
def read_scaler(run_dir: Path) -> Scaler | None:
    """The run's ``scaler.json`` (tables), None where there is none."""
    path = run_dir / SCALER_FILE
    if not path.exists():
        return None
    try:
        return Scaler.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, RecursionError) as e:  # DataError is a ValueError
        raise RunDirectoryError(
            f"{path} is not a scaler saved by gmvae train ({str(e)[:80]}); restore it from a copy"
        ) from None


# ---------------------------------------------------------------------------- the directory
@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s run lock for the block; refuse when another process holds it.

    The lock is ``flock`` on ``path/.lock``: released by the kernel when the holder exits, so a
    killed run leaves no lock that blocks the next one (the empty file stays, harmlessly).
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RunDirectoryError(
                f"{path} is in use by a running gmvae command ({holder}); wait for it to end, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _entries(path: Path) -> list[Path]:
    """What a directory holds, but its lock file."""
    return [p for p in path.iterdir() if p.name != LOCK_FILE]


def _is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds a run's ``config.json`` (not just any file of that common name)."""
    try:
        saved = json.loads((path / CONFIG_FILE).read_text())
        if not isinstance(saved, dict) or set(saved) != {"data", "model", "train"}:
            return False
        RunConfig.from_dict(saved)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return False
    return True


def check_run_directory(path: Path, *, resume: bool, force: bool) -> None:
    """Refuse ``path`` for a new run (``resume=False``) unless absent, empty, or an old run that
    ``force`` may replace; for ``resume`` it must hold a checkpoint. Changes nothing."""
    if resume and force:
        raise RunDirectoryError("--resume and --force contradict each other; pass one of them")
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} is a file, not a directory; choose another --out")
    if resume:
        if not (path / CHECKPOINT_FILE).exists():
            started = (path / CONFIG_FILE).exists()
            raise RunDirectoryError(
                f"cannot resume: {path} holds no {CHECKPOINT_FILE}"
                + (
                    " (the run stopped before its first checkpoint); start it over with --force"
                    if started
                    else "; start a new run without --resume"
                )
            )
        return
    if path.exists() and _entries(path):
        if not force:
            raise RunDirectoryError(
                f"{path} already exists and is not empty; pass --resume to continue that run, "
                "--force to start it over, or choose another --out"
            )
        if not _is_run_directory(path):
            raise RunDirectoryError(
                f"{path} is not a pyro_gmvae run directory (no run {CONFIG_FILE}); --force only "
                "overwrites runs, choose another --out"
            )


def _remove_leftovers(path: Path) -> None:
    """Temporary files of writers that died mid-write (only the lock holder writes here)."""
    for folder in (path, path / FIGURES_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _clear_run(path: Path) -> None:
    """Remove an old run's own files and figures (``--force``), nothing else of the directory."""
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / FIGURES_DIR, ignore_errors=True)


def prepare_run_directory(path: str | Path, *, resume: bool, force: bool) -> Path:
    """Create ``path`` for a new run, or check it holds a run to resume; call it holding the
    run's lock (:func:`locked`).

    An existing non-empty directory is never reused silently: ``resume`` continues it, ``force``
    starts over (only the run's own files and figures are removed). Temporary files of writers
    that died mid-write are removed either way.
    """
    path = Path(path)
    check_run_directory(path, resume=resume, force=force)
    path.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    if not resume:
        _clear_run(path)
    return path


# ------------------------------------------------------------------------------ the data
def split_heldout(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """The split of every run: ``fraction`` of the rows held out at random with the run's
    ``seed``, whether they have a label or not; ``(dataset, None)`` when ``fraction`` is 0."""
    if fraction == 0:
        return dataset, None
    return dataset.split(fraction, seed=seed)


def data_fingerprint(
    x: np.ndarray | ScaledRows, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """What identifies training data ``x (N, D)`` without storing it: its size and a hash of up
    to 256 evenly spaced rows (a whole pass over millions of rows would cost more than a check),
    the only rows read of a :class:`~pyro_gmvae.dataset.ScaledRows`; with ``labels (N,)`` (a run
    that trains with labels known) a hash of all of them too, since they decide which rows
    training sees labelled."""
    rows = np.unique(np.linspace(0, len(x) - 1, min(len(x), 256)).round().astype(np.int64))
    sample = np.ascontiguousarray(np.asarray(x[rows], dtype=np.float32))
    shape = (len(x), x.shape[1])
    digest = hashlib.sha256(np.asarray(shape, np.int64).tobytes() + sample.tobytes())
    fingerprint = {"rows": shape[0], "features": shape[1], "sample_sha256": digest.hexdigest()}
    if labels is not None:
        codes = np.ascontiguousarray(labels, dtype=np.int64)
        fingerprint["labels_sha256"] = hashlib.sha256(codes.tobytes()).hexdigest()
    return fingerprint


def _check_fingerprint(saved: dict[str, Any] | None, here: dict[str, Any], out: Path) -> None:
    if saved is None:
        return
    if any(saved.get(key) != here[key] for key in ("rows", "features", "sample_sha256")):
        if (saved.get("rows"), saved.get("features")) != (here["rows"], here["features"]):
            what = (
                f"{saved.get('rows')} rows of {saved.get('features')} features there, "
                f"{here['rows']} of {here['features']} here"
            )
        else:
            what = "the same size, but other values"
        raise CheckpointError(
            f"{out} was trained on other data ({what}); resume with the data, "
            "--heldout-fraction and seed it was trained with, or start a new run"
        )
    # Runs saved before the labels were fingerprinted have no labels_sha256: the data must do.
    if "labels_sha256" in saved and saved["labels_sha256"] != here.get("labels_sha256"):
        raise CheckpointError(
            f"{out} was trained with other labels (the same data, but labels changed or filled "
            "in since); resume with the labels it was trained with, or start a new run"
        )


def _training_data(config: RunConfig) -> tuple[Dataset, Dataset, Dataset | None]:
    """The run's data, its training part and its held-out part, checked against the model's
    options; fills ``config.model``'s sizes from the data."""
    dataset = load_data(
        config.data.data,
        label_column=config.data.label_column,
        kind=config.data.kind,
        allow_missing_labels=config.train.semi_supervised,  # the rows with a label train
    )
    train_data, heldout = split_heldout(dataset, config.data.heldout_fraction, config.train.seed)
    check_min_rows(train_data, config.model.clusters)
    if config.model.n_features and config.model.n_features != dataset.n_features:
        raise CheckpointError(
            f"the run was trained on data with {config.model.n_features} features, "
            f"{config.data.data} has {dataset.n_features}; resume with the same data"
        )
    if dataset.kind == "table" and config.model.likelihood != "gaussian":
        raise DataError(
            f"{config.data.data} is a standardized table; the {config.model.likelihood} likelihood "
            "needs values in [0, 1]: pass --likelihood gaussian (or --kind image for images)"
        )
    config.model.n_features = dataset.n_features
    config.model.image_shape = dataset.image_shape
    # saved in config.json with the rest, so that a resumed run keeps them
    chosen = {
        **config.model.size_from_data(),
        **config.train.start_from_data(dataset.n_features),
        **config.model.guide_from_labels(config.train.semi_supervised),
    }
    if chosen:
        said = ", ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in chosen.items()
        )
        # --guide follows whether labels are known, the rest the data's width
        labels = ""
        if "guide" in chosen:
            labels = ", with labels" if config.train.semi_supervised else ", without labels"
        print(
            f"gmvae: chosen from the data's {dataset.n_features} features{labels}: {said} (pass "
            "them to choose)",
            file=sys.stderr,
        )
    return dataset, train_data, heldout


# ------------------------------------------------------------------------------ training
def resumed_config(out: Path, given: dict[str, dict[str, Any]]) -> RunConfig:
    """The configuration of the run in ``out`` with the options ``given`` (``{"data": {...},
    "model": {...}, "train": {...}}``, only those a user passed) applied; only
    :data:`RESUMABLE` options may differ from the saved ones."""
    path = out / CONFIG_FILE
    if not path.exists():
        raise RunDirectoryError(
            f"cannot resume: {out} holds no {CONFIG_FILE}; start a new run without --resume"
        )
    saved = RunConfig.load(path)
    changed = [
        name
        for section, values in given.items()
        for name, value in values.items()
        if name not in RESUMABLE and getattr(getattr(saved, section), name) != value
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"{flags} differ from the run being resumed in {out}; drop them to resume, "
            "or start a new run (another --out, or --force)"
        )
    data = saved.to_dict()
    for section, values in given.items():
        data[section] |= values
    return RunConfig.from_dict(data)


def train_run(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    plots: bool = True,
    distributed: DistributedConfig | None = None,
) -> dict[str, Any]:
    """``gmvae train``: load the data, fit a model into run directory ``out``, score it.

    The model's weights are drawn after seeding with ``config.train.seed``, and training seeds
    again as it begins, as :func:`~pyro_gmvae.train.fit` does. Returns the final scores
    (clustering metrics when the data has labels).

    ``distributed`` (``--devices``, ``--accelerator``, ``--strategy``, ``--num-nodes``), when it
    asks for more than the default, trains on PyTorch Lightning
    (:func:`~pyro_gmvae.distributed.run_lightning`). Every process runs this function; only
    rank 0 checks, locks and writes the run directory and scores the result, the others train
    and return ``{"run_dir": ..., "rank": R}``.
    """
    config.validate()
    out = Path(out)
    lightning = distributed is not None and distributed.uses_lightning
    if lightning:
        from .distributed import check_lightning, launch_rank

        distributed.validate()
        check_lightning()
        rank = launch_rank(distributed.devices)
    else:
        resolve_device(config.train.device)
        rank = 0
    if rank != 0:
        return _train_follower(config, out, resume, distributed, rank)
    if lightning:
        from .distributed import close_process_group

        try:
            return _train_leader(config, out, resume, force, progress, plots, distributed)
        finally:
            close_process_group()  # after the scores and figures: the others wait for them
    return _train_leader(config, out, resume, force, progress, plots, distributed)


def _train_leader(
    config: RunConfig,
    out: Path,
    resume: bool,
    force: bool,
    progress: bool,
    plots: bool,
    distributed: DistributedConfig | None,
) -> dict[str, Any]:
    """:func:`train_run` in its only process, or as rank 0 of several."""
    lightning = distributed is not None and distributed.uses_lightning
    check_run_directory(out, resume=resume, force=force)
    dataset, train_data, heldout = _training_data(config)
    seed_everything(config.train.seed)
    model = GMVAE(config.model)
    fingerprint = data_fingerprint(
        train_data.x, train_data.labels if config.train.semi_supervised else None
    )
    trainer = Trainer(
        model,
        train_data.x,
        config.train,
        labels=train_data.labels,
        run_dir=out,
        run_config=config,
        progress=progress,
        extra_state={"data": fingerprint},
    )
    # Every check has passed: only now is anything on disk created, replaced or removed.
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        prepare_run_directory(out, resume=resume, force=force)  # checked again, now ours
        if resume:
            saved = trainer.resume(read_metrics(out))
            _check_fingerprint(saved.get("data"), fingerprint, out)
        config.save(out / CONFIG_FILE)  # on resume: records a changed --epochs or --device
        if not resume and dataset.scaler is not None:
            atomic_write_text(out / SCALER_FILE, json.dumps(dataset.scaler.to_dict()))
        if lightning:
            from .distributed import run_lightning

            run_lightning(trainer, distributed)
        else:
            trainer.run()

        result: dict[str, Any] = {"run_dir": str(out), "epochs": trainer.epoch}
        if trainer.history:
            result["loss"] = trainer.history[-1]["loss"]
        predicted = {}  # each part once, in batches: data on disk is read a chunk at a time
        for part, data in (("train", train_data), ("heldout", heldout)):
            if data is not None and data.labels is not None and data.labelled.any():
                predicted[part] = model.predict(data.x)
                result[part] = clustering_scores(data.labels, predicted[part])
                if not data.labelled.all():  # the scores are on the rows that have a label
                    result[part]["rows_without_label"] = int((~data.labelled).sum())
        if trainer.known is not None:
            # Clusters are classes: plain accuracy, on the rows with a label that training saw
            # unlabelled and on the held-out rows with a label.
            known = trainer.known.cpu().numpy()
            unseen = train_data.labelled & ~known
            if unseen.any():
                result["train"]["class_accuracy"] = class_accuracy(
                    train_data.labels[unseen], predicted["train"][unseen]
                )
            if "heldout" in predicted:
                result["heldout"]["class_accuracy"] = class_accuracy(
                    heldout.labels, predicted["heldout"]
                )
            result["labels_known"] = int(known.sum())
        if plots:
            from .plots import training_figures

            result["figures"] = [
                str(p) for p in training_figures(model, train_data, trainer.history, out)
            ]
    return result


def _train_follower(
    config: RunConfig, out: Path, resume: bool, distributed: DistributedConfig, rank: int
) -> dict[str, Any]:
    """What a process of rank > 0 does in :func:`train_run`: the same model on the same data,
    trained in step with rank 0, which alone reads the directory's state for the checks and
    writes into it. A resumed run reads the checkpoint here too (rank 0 does not replace it
    before the first epoch ends), so the run directory must be on a file system every node
    sees."""
    from .distributed import close_process_group, run_lightning

    _, train_data, _ = _training_data(config)
    seed_everything(config.train.seed)
    model = GMVAE(config.model)
    trainer = Trainer(
        model, train_data.x, config.train, labels=train_data.labels, run_dir=out, progress=False
    )
    try:
        if resume:
            trainer.resume(read_metrics(out))
        run_lightning(trainer, distributed)
    finally:
        close_process_group()  # waits for rank 0's scores and figures
    return {"run_dir": str(out), "rank": rank}


# ------------------------------------------------------------------------- a finished run
@dataclass
class Run:
    """A trained run, opened to be used: its directory, configuration (None for a model saved
    by ``GMVAE.save`` alone), the model, and the scaler of its table."""

    path: Path
    config: RunConfig | None
    model: GMVAE
    scaler: Scaler | None

    @property
    def is_image(self) -> bool:
        return self.model.config.image_shape is not None


def open_run(path: str | Path, map_location: str = "cpu") -> Run:
    """The run in directory ``path`` (or its ``checkpoint.pt``)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    model = GMVAE.load(path, map_location=map_location)
    config = RunConfig.load(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    return Run(run_dir, config, model, read_scaler(run_dir))


def load_run_data(
    run: Run, spec: str, label_column: str | None = None
) -> tuple[Dataset, list[str]]:
    """``spec`` preprocessed as ``run`` saw its training data: images as images, tables
    standardized with the run's ``scaler.json``; labels from ``label_column``, or from the run's
    own label column when ``spec`` is a CSV, missing on some rows only for a run trained with
    labels known (as its training data may be). Returns the data and warnings for the user."""
    warnings = []
    if run.scaler is None and not run.is_image:
        warnings.append(
            f"{run.path} has no {SCALER_FILE}; the table is standardized with its own means and "
            "standard deviations"
        )
    if label_column is None and run.config is not None and str(spec).lower().endswith(".csv"):
        label_column = run.config.data.label_column
    dataset = load_data(
        spec,
        label_column=label_column,
        scaler=run.scaler,
        kind="image" if run.is_image else "table",
        allow_missing_labels=run.config is not None and run.config.train.semi_supervised,
    )
    return dataset, warnings


def heldout_split(
    run: Run, dataset: Dataset, fraction: float | None = None
) -> tuple[Dataset, Dataset | None]:
    """``dataset`` split as the run split its training data (``fraction`` None: the run's own
    held-out fraction and seed), so the held-out part is exactly what the run never saw."""
    if fraction is None:
        fraction = run.config.data.heldout_fraction if run.config is not None else 0.0
    if not 0 <= fraction < 1:
        raise ConfigError(f"--heldout-fraction must be in [0, 1), not {fraction}")
    return split_heldout(dataset, fraction, run.config.train.seed if run.config else 0)


def write_evaluation(run: Run, result: dict[str, Any]) -> Path:
    """Save :func:`~pyro_gmvae.evaluate.evaluate`'s result as the run's ``evaluation.json``."""
    path = run.path / EVALUATION_FILE
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def write_ppc_report(report: PPCReport, out_dir: str | Path) -> list[Path]:
    """Write a report of posterior predictive checks into directory ``out_dir``: ``report.md``
    (the report's Markdown, figures embedded), ``ppc.json`` (the numbers) and ``figures/``, each
    file atomically. Returns the paths written."""
    from .plots import ppc_figures  # matplotlib: only when a report is written

    out_dir = Path(out_dir)
    figures = ppc_figures(report, out_dir)
    links = {key: path.relative_to(out_dir).as_posix() for key, path in figures.items()}
    atomic_write_text(out_dir / REPORT_FILE, report.to_markdown(links))
    atomic_write_text(out_dir / PPC_FILE, json.dumps(report.to_dict(), indent=1) + "\n")
    return [out_dir / REPORT_FILE, out_dir / PPC_FILE, *figures.values()]
