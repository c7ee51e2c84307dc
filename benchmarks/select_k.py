"""How often does :func:`~pyro_gmvae.select_clusters` recover the number of classes?

For each dataset and seed, runs ``select_clusters`` over the dataset's candidate Ks with the
library's defaults (``GMVAEClustering``'s parameters; images also get their ``image_shape``, which
turns on the recipe's random shifts and rotations, as ``gmvae select`` does) and asks whether the
recommended K is the number of classes. The labels are passed only to report each K's accuracy
and NMI beside; the rule never sees them.

- ``iris`` (3 classes) and ``wine`` (3): scikit-learn's tables, standardized on all rows (as
  ``load_data`` standardizes a table), candidates 2..6;
- ``digits`` (10): scikit-learn's 8x8 digits as ``load_data("digits")`` gives them, candidates
  6, 8, 10, 12, 14;
- ``mnist8k`` (10): the shared 8,000 MNIST digits (``$PYRO_GMVAE_MNIST8K``), ``images / 255`` as
  float32, same candidates.

Writes ``OUT/DATA-seedS.json`` after each run (the table, the recommendation, the settings, the
machine and the wall time; an existing one is kept, so an interrupted benchmark resumes) and
``OUT/summary.md`` from every JSON in ``OUT``. ``--set name=value`` overrides an estimator
parameter for the whole invocation (e.g. a shortened recipe), and is recorded in the JSON.

    OMP_NUM_THREADS=1 python benchmarks/select_k.py --data iris wine --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from clustering import machine_info  # beside this script
from sklearn.datasets import load_iris, load_wine
from sklearn.preprocessing import StandardScaler

from pyro_gmvae import load_data, select_clusters
from pyro_gmvae.files import atomic_write_text

from _paths import REPO_ROOT, resolve_mnist8k

CANDIDATES = {
    "iris": [2, 3, 4, 5, 6],
    "wine": [2, 3, 4, 5, 6],
    "digits": [6, 8, 10, 12, 14],
    "mnist8k": [6, 8, 10, 12, 14],
}
DEFAULT_OUT = REPO_ROOT / "benchmarks/results/select-k-cpu"


def load(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Rows ``x (N, D)`` float32, labels ``(N,)`` and the image shape (None for tables)."""
    if name in ("iris", "wine"):
        x, y = (load_iris if name == "iris" else load_wine)(return_X_y=True)
        return StandardScaler().fit_transform(x).astype(np.float32), y, None
    if name == "digits":
        data = load_data("digits")
        return data.x, data.labels, data.image_shape
    if name == "mnist8k":
        path = resolve_mnist8k()
        if path is None:
            sys.exit("mnist8k.npz not found; set PYRO_GMVAE_MNIST8K to its path")
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
        x = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
        return x, labels, tuple(images.shape[1:3]) if images.ndim == 3 else (28, 28)
    raise ValueError(f"unknown data {name!r}; one of {', '.join(CANDIDATES)}")


def run(name: str, seed: int, overrides: dict[str, Any], jobs: int) -> dict[str, Any]:
    x, labels, image_shape = load(name)
    n_classes = len(np.unique(labels))
    params = dict(overrides)
    if image_shape is not None:
        params["image_shape"] = image_shape
    started = time.perf_counter()
    selection = select_clusters(
        x, CANDIDATES[name], labels=labels, random_state=seed, n_jobs=jobs, device="cpu", **params
    )
    return {
        "data": name,
        "seed": seed,
        "rows": len(x),
        "n_classes": n_classes,
        "candidates": CANDIDATES[name],
        "recommended": selection.recommended,
        "best": selection.best,
        "recovered": selection.recommended == n_classes,
        "rule": selection.rule,
        "settings": {
            "heldout_fraction": 0.2,
            "n_importance_samples": 100,
            "n_jobs": jobs,
            "overrides": overrides,
            "estimator_defaults_otherwise": True,
            **({"image_shape": list(image_shape)} if image_shape else {}),
        },
        "table": selection.table,
        "seconds": time.perf_counter() - started,
        "machine": machine_info() | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def summary(out: Path) -> str:
    """A Markdown table of every run in ``out``, one row per dataset."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*-seed*.json"))]
    lines = [
        "# Choosing K: how often the rule recovers the number of classes",
        "",
        "Rule: " + (runs[0]["rule"] if runs else "") + ".",
        "",
        "| data | classes | candidates | recommended K per seed | recovered | overrides | "
        "minutes per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in CANDIDATES:
        mine = sorted((r for r in runs if r["data"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        per_seed = ", ".join(f"{r['recommended']} (seed {r['seed']})" for r in mine)
        recovered = sum(r["recovered"] for r in mine)
        overrides = {json.dumps(r["settings"]["overrides"], sort_keys=True) for r in mine}
        minutes = np.mean([r["seconds"] for r in mine]) / 60
        lines.append(
            f"| {name} | {mine[0]['n_classes']} | {', '.join(map(str, mine[0]['candidates']))} | "
            f"{per_seed} | {recovered} of {len(mine)} | {'; '.join(sorted(overrides))} | "
            f"{minutes:.1f} |"
        )
    lines += ["", "Per K (held-out log p(x) ± s.e., clusters used, training accuracy):", ""]
    for r in sorted(runs, key=lambda r: (list(CANDIDATES).index(r["data"]), r["seed"])):
        cells = [
            f"K={row['k']}{'*' if row['k'] == r['recommended'] else ''}: "
            f"{row['heldout_log_likelihood']:.2f} ± {row['heldout_log_likelihood_se']:.2f}, "
            f"{row['clusters_used']} used, acc {row['accuracy']:.2f}"
            for row in r["table"]
        ]
        lines.append(f"- {r['data']} seed {r['seed']}: " + "; ".join(cells))
    if runs:
        m = runs[0]["machine"]
        lines += [
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
            f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}; other jobs shared the box, so times are "
            "indicative.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="Ks fitted at once (processes)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an estimator parameter, e.g. pretrain_epochs=50",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = ast.literal_eval(value)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.data:
        for seed in args.seeds:
            path = args.out / f"{name}-seed{seed}.json"
            if path.exists():
                print(f"{path} exists, kept", flush=True)
                continue
            print(f"{name} seed {seed} ...", flush=True)
            result = run(name, seed, overrides, args.jobs)
            atomic_write_text(path, json.dumps(result, indent=1) + "\n")
            print(
                f"{name} seed {seed}: recommended {result['recommended']} "
                f"(classes {result['n_classes']}), {result['seconds']:.0f} s",
                flush=True,
            )
            atomic_write_text(args.out / "summary.md", summary(args.out))


if __name__ == "__main__":
    main()
