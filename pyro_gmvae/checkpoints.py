"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a ``torch.save`` zip of tensors and plain Python values with a format header. It
is loaded with ``torch.load(weights_only=True)``, so a crafted file cannot run code, and only after
checks that bound what is read: a regular file (not a FIFO, a device such as ``/dev/zero``, or a
symbolic link to one), at most :data:`MAX_CHECKPOINT_BYTES`, whose zip members pass their CRCs.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import atomic_write_bytes

CHECKPOINT_FORMAT = "pyro_gmvae-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
#: The largest checkpoint read (the default network with its optimizer state is about 40 MB).
MAX_CHECKPOINT_BYTES = 8 * 2**30


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
    _check_readable(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    # Read by torch.load, anything but a zip or a pickle would be judged a pickle that may run
    # code: name what it is instead.
    if magic == b"\x93NUMPY":
        raise CheckpointError(
            f"{path} is a numpy .npy array, not a checkpoint; pass a run directory of gmvae train "
            "(or its checkpoint.pt), and data with --data"
        )
    # A zip (torch.save) or a pickle (torch's legacy format) goes on to be judged, and so does a
    # file cut inside the zip's first bytes (truncated).
    if not magic.startswith((b"PK", b"\x80")) and not b"PK\x03\x04".startswith(magic):
        raise CheckpointError(
            f"{path} is not a checkpoint (pyro_gmvae writes zip archives with torch.save); pass "
            "a run directory of gmvae train or its checkpoint.pt"
        )
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


def _check_readable(path: Path) -> None:
    """Refuse, before reading a byte, a checkpoint that is absent, not a regular file, or too big
    to be one: reading ``/dev/zero`` or an endless pipe would never end."""
    try:
        info = os.stat(path)  # follows a symbolic link to what it names
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {path}; train a model there first (gmvae train)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(
            f"{path} is not a regular file (a device, pipe or socket, or a link to one); a "
            "checkpoint is a file written by pyro_gmvae: replace it with one"
        )
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path} has {info.st_size / 2**30:.1f} GiB, more than any pyro_gmvae checkpoint "
            f"({MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB at most); it is not one of ours"
        )
