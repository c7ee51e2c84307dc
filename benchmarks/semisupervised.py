"""Semi-supervised benchmark: pyro_gmvae with a few labels known against Pyro's ss_vae_M2 and a
logistic regression trained on the labelled rows alone.

For each dataset and seed, trains pyro_gmvae exactly as ``gmvae train --labels-known N
--heldout-fraction F`` would (``train_run`` with the library's defaults, K=10, any option
overridable with the model and training flags of ``gmvae train``): the held-out rows are drawn with the seed, then N of the
training rows are labelled, balanced per class (``pyro_gmvae.dataset.labelled_rows`` with the
seed), y observed on them and summed out on the others. Clusters are tied to classes, so the
accuracy is plain, with no matching: on the unlabelled training rows and on the held-out rows.

The baselines, on the same rows and labels (``labelled_split``):

- ``ss_vae_M2``: Pyro's ``examples/vae/ss_vae_M2.py``, its model, guide, auxiliary loss, epoch and
  defaults ported in ``ss_vae_m2.py`` beside this script (which says what differs), trained on the
  rows pyro_gmvae trains on for ``--m2-epochs`` (the example's 50) and scored by ``argmax
  q(y|x)`` after the last epoch;
- ``logreg-labelled``: scikit-learn's ``LogisticRegression`` (defaults, ``max_iter=5000``) fitted
  on the labelled rows' pixels alone.

``--methods`` picks which run (all by default); the model and training flags of ``gmvae train``
are pyro_gmvae's alone. Prints the machine and one table (mean, std and worst seed), writes every
per-seed result to ``OUT/results.json`` after each run, and the table to ``OUT/results.md``::

    python benchmarks/semisupervised.py --datasets digits --labels 50 --seeds 0 1 2 \\
        --out benchmarks/results/semi-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from clustering import format_machine, machine_info, resolve_spec  # beside this script
from sklearn.linear_model import LogisticRegression
from ss_vae_m2 import M2Config, config_record, predict_classes, train_ss_vae
from threadpoolctl import threadpool_limits

from pyro_gmvae.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
)
from pyro_gmvae.data import load_data
from pyro_gmvae.dataset import Dataset, labelled_rows
from pyro_gmvae.files import atomic_write_text
from pyro_gmvae.metrics import class_accuracy
from pyro_gmvae.runs import split_heldout, train_run

GMVAE = "pyro_gmvae"
M2 = "ss_vae_M2"
BASELINE = "logreg-labelled"


def run_gmvae(spec: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    train = from_arguments(TrainConfig, args, TrainConfig())
    train.seed, train.labels_known = seed, args.labels
    config = RunConfig(
        data=DataConfig(data=spec, heldout_fraction=args.heldout_fraction),
        model=from_arguments(ModelConfig, args, ModelConfig(clusters=10)),
        train=train,
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train_run(config, Path(out) / "run", progress=False, plots=False)
    return {
        "unlabelled": result["train"]["class_accuracy"],
        "heldout": result["heldout"]["class_accuracy"],
        "labels_known": result["labels_known"],
        "seconds": time.perf_counter() - began,
    }


def labelled_split(
    spec: str, seed: int, args: argparse.Namespace
) -> tuple[Dataset, Dataset, np.ndarray]:
    """The training rows, the held-out rows and the mask ``(N_train,)`` of labelled training
    rows that ``gmvae train`` uses with the same seed: what every baseline is given."""
    train, heldout = split_heldout(load_data(spec), args.heldout_fraction, seed)
    return train, heldout, labelled_rows(train.labels, args.labels, seed)


def run_m2(spec: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pyro's ss_vae_M2 (``ss_vae_m2.py``) on the rows and labels ``gmvae train`` uses."""
    train, heldout, known = labelled_split(spec, seed, args)
    config = M2Config(num_epochs=args.m2_epochs)
    classes = int(train.labels.max()) + 1
    began = time.perf_counter()
    ss_vae, history = train_ss_vae(
        train.x[known], train.labels[known], train.x[~known], classes, config, seed
    )
    return {
        "unlabelled": class_accuracy(
            train.labels[~known], predict_classes(ss_vae, train.x[~known])
        ),
        "heldout": class_accuracy(heldout.labels, predict_classes(ss_vae, heldout.x)),
        "labels_known": int(known.sum()),
        "seconds": time.perf_counter() - began,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])),
        "config": config_record(config),
        "last_epoch": history[-1],
    }


def run_logreg(spec: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The baseline on the rows and labels ``gmvae train`` uses with the same seed."""
    train, heldout, known = labelled_split(spec, seed, args)
    began = time.perf_counter()
    classifier = LogisticRegression(max_iter=5000).fit(train.x[known], train.labels[known])
    return {
        "unlabelled": class_accuracy(train.labels[~known], classifier.predict(train.x[~known])),
        "heldout": class_accuracy(heldout.labels, classifier.predict(heldout.x)),
        "labels_known": int(known.sum()),
        "seconds": time.perf_counter() - began,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data | labels | method | held-out accuracy: mean ± std (worst) | unlabelled training "
        "rows: mean (worst) | seeds | time per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["data"], r["labels"], r["method"]) for r in results})
    for data, labels, method in keys:
        rows = [
            r for r in results if (r["data"], r["labels"], r["method"]) == (data, labels, method)
        ]
        held = np.array([r["heldout"] for r in rows])
        unl = np.array([r["unlabelled"] for r in rows])
        secs = np.mean([r["seconds"] for r in rows])
        lines.append(
            f"| {data} | {labels} | {method} | {held.mean():.3f} ± {held.std():.3f} "
            f"({held.min():.3f}) | {unl.mean():.3f} ({unl.min():.3f}) | {len(rows)} | {secs:.0f} s |"
        )
    return "\n".join(lines)


#: In the order they run for each seed.
METHODS = {BASELINE: run_logreg, M2: run_m2, GMVAE: run_gmvae}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits"])
    parser.add_argument("--labels", type=int, default=50, help="labelled training rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="(default: all)"
    )
    parser.add_argument(
        "--m2-epochs",
        type=int,
        default=M2Config.num_epochs,
        help=f"ss_vae_M2's epochs (default: the example's {M2Config.num_epochs})",
    )
    train_flags = argparse.ArgumentParser(add_help=False)
    add_arguments(train_flags, ModelConfig, suppress_defaults=True)
    add_arguments(train_flags, TrainConfig, suppress_defaults=True)
    args, rest = parser.parse_known_args(argv)
    train_args = train_flags.parse_args(rest)
    for name in ("seed", "labels_known"):
        if hasattr(train_args, name):
            parser.error(f"--{name.replace('_', '-')} is set by --seeds and --labels")
    args.__dict__.update(vars(train_args))

    machine = machine_info()
    print(format_machine(machine), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name in args.datasets:
        spec = resolve_spec(name)
        for seed in args.seeds:
            for method in args.methods:
                run = METHODS[method]
                with threadpool_limits(1):
                    measured = run(spec, seed, args)
                results.append(
                    {"data": name, "labels": args.labels, "seed": seed, "method": method} | measured
                )
                print(json.dumps(results[-1]), flush=True)
                summary = {
                    "machine": machine,
                    "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "command": " ".join(sys.argv),
                    "results": results,
                }
                atomic_write_text(args.out / "results.json", json.dumps(summary, indent=2) + "\n")
    markdown = f"{format_machine(machine)}\n\n{table(results)}\n"
    atomic_write_text(args.out / "results.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
