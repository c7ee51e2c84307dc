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
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError, RunDirectoryError
from .files import atomic_write_bytes, atomic_write_text

CHECKPOINT_FORMAT = "pyro_gmvae-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SCALER_FILE = "scaler.json"


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
            started = (path / CONFIG_FILE).exists()
            raise RunDirectoryError(
                f"cannot resume: {path} holds no {CHECKPOINT_FILE}"
                + (
                    " (the run stopped before its first checkpoint); start it over with --force"
                    if started
                    else "; start a new run without --resume"
                )
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
        if not _is_run_directory(path):
            raise RunDirectoryError(
                f"{path} is not a pyro_gmvae run directory (no run {CONFIG_FILE}); --force only "
                "overwrites runs, choose another --out"
            )
        for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, SCALER_FILE, "evaluation.json"):
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds a run's ``config.json`` (not just any file of that common name)."""
    from .config import RunConfig

    try:
        saved = json.loads((path / CONFIG_FILE).read_text())
        if not isinstance(saved, dict) or set(saved) != {"data", "model", "train"}:
            return False
        RunConfig.from_dict(saved)
    except (OSError, ValueError, TypeError, AttributeError):  # ConfigError is a ValueError
        return False
    return True


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain Python values) atomically with the format's header."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _failed_checksum(path: Path) -> str | None:
    """The first member of checkpoint zip ``path`` whose CRC-32 does not match, if any.

    torch.load does not check the CRCs it writes, so a flipped bit in a tensor would otherwise
    load silently as a wrong weight. Files that are not zips are left to torch.load to judge.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing any code it may contain."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train a model there first (gmvae train)")
    damaged = _failed_checksum(path)
    if damaged is not None:
        raise CheckpointError(
            f"{path} is corrupt: its part {damaged} fails its checksum (truncated or corrupt on "
            "disk or in transit); resume from another copy or train again"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # Name what the file tried to load; torch's own message suggests weights_only=False,
        # the very thing that would run the code.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "Python objects"
        raise CheckpointError(
            f"{path} was refused: it holds {what}, not just tensors and plain values, so loading it could "
            "run code. Only load checkpoints written by pyro_gmvae, from a source you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).split(". ")[0] or type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {reason}); "
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
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise RunDirectoryError(
            f"{path} is not readable JSON lines ({e}); restore it from a copy, or delete it to "
            "resume without the earlier epochs' records"
        ) from None


def write_metrics(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in records))


# ---- posterior predictive check reports
if TYPE_CHECKING:
    from .ppc import PPCReport


def write_ppc_report(report: PPCReport, out_dir: str | Path) -> list[Path]:
    """Write a report of posterior predictive checks into directory ``out_dir``: ``report.md``
    (the report's Markdown, figures embedded), ``ppc.json`` (the numbers) and ``figures/``, each
    file atomically. Returns the paths written."""
    # Imported here: plots and ppc import the model, which imports this module.
    from .plots import ppc_figures
    from .ppc import PPC_FILE, REPORT_FILE

    out_dir = Path(out_dir)
    figures = ppc_figures(report, out_dir)
    links = {key: path.relative_to(out_dir).as_posix() for key, path in figures.items()}
    atomic_write_text(out_dir / REPORT_FILE, report.to_markdown(links))
    atomic_write_text(out_dir / PPC_FILE, json.dumps(report.to_dict(), indent=1) + "\n")
    return [out_dir / REPORT_FILE, out_dir / PPC_FILE, *figures.values()]
