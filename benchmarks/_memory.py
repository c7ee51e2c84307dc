"""Peak memory of a benchmark's processes, from Linux's ``/proc/PID/status``.

Not ``ru_maxrss`` (``resource.getrusage``, ``os.wait4``): at ``exec`` Linux folds the address
space being replaced into it, and ``subprocess`` starts a child by ``vfork`` and ``exec``, so a
child's ``ru_maxrss`` is at least its parent's peak. ``scale.py`` reported its own peak that
way (9.29 GiB for a 1,000,000-row run whose training process peaked at 1.66 GiB: the rows
it makes hold 3 float32 copies). ``VmHWM`` is the peak of one address space, started afresh at
``exec``. Imported as ``_memory`` by the scripts beside it, as ``_paths`` is.
"""

from __future__ import annotations

import threading
from pathlib import Path


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in KiB; None where there is
    none (the process has ended, or this is not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its children, theirs, ...), from each process's parent in
    ``/proc/*/stat``; empty where there is no ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The name (field 2) is in parentheses and may hold spaces: the parent follows ')'.
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, queue = [], [pid]
    while queue:
        below = children.get(queue.pop(), [])
        found += below
        queue += below
    return found


class PeakMemory:
    """Watch process ``pid`` until :meth:`stop`: every ``interval`` seconds, its own ``VmHWM``
    and the resident memory of it and all its descendants together (the start's worker
    processes among them). ``peak_kib`` is the last ``VmHWM`` read (a peak, so growth in the
    last interval before the process ends is all it can miss); ``tree_peak_kib`` the largest
    sum seen (a sample: a spike shorter than ``interval`` can fall between two reads)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.tree_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            peak = status_kib("VmHWM", self.pid)
            if peak is not None:
                self.peak_kib = max(self.peak_kib, peak)
                tree = [self.pid, *descendants(self.pid)]
                total = sum(status_kib("VmRSS", p) or 0 for p in tree)
                self.tree_peak_kib = max(self.tree_peak_kib, total)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


__all__ = ["PeakMemory", "descendants", "status_kib"]
