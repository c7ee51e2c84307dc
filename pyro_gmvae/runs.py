"""Run directories and checkpoints: written atomically, loaded without executing code.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per epoch),
``checkpoint.pt`` and ``figures/``. Every file is written to a temporary file in the same directory,
flushed to disk and renamed over the old one, so an interruption leaves the previous version intact.
Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors and plain Python values only,
so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "pyro_gmvae-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SCALER_FILE = "scaler.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe, or of another format or configuration."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (exists already, or is not a run)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def prepare_run_directory(path: str | Path, *, resume: bool, force: bool) -> Path:
    """Create ``path`` for a new run, or check it holds a run to resume.

    An existing non-empty directory is never reused silently: ``resume`` continues it, ``force``
    starts over (only the run's own files are removed).
    """
    path = Path(path)
    if resume and force:
        raise RunDirectoryError("--resume and --force contradict each other; pass one of them")
    if resume:
        if not (path / CHECKPOINT_FILE).exists():
            raise RunDirectoryError(
                f"cannot resume: {path} holds no {CHECKPOINT_FILE}; start a new run without --resume"
            )
        return path
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} is a file, not a directory; choose another --out")
    if path.exists() and any(path.iterdir()):
        if not force:
            raise RunDirectoryError(
                f"{path} already exists and is not empty; pass --resume to continue that run, "
                "--force to start it over, or choose another --out"
            )
        if not (path / CONFIG_FILE).exists():
            raise RunDirectoryError(
                f"{path} is not a pyro_gmvae run directory (no {CONFIG_FILE}); --force only "
                "overwrites runs, choose another --out"
            )
        for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, SCALER_FILE, "evaluation.json"):
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain Python values) atomically with the format's header."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing any code it may contain."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train a model there first (gmvae train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} was refused: it holds Python objects other than tensors and plain values, "
            "which could run code when loaded. Only load checkpoints written by pyro_gmvae "
            f"({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {e}); "
            "resume from another copy or train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro_gmvae checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('version')}, this pyro_gmvae reads "
            f"version {CHECKPOINT_VERSION}; load it with the pyro_gmvae release that wrote it"
        )
    return state


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in records))
