"""Why the default lost its start on 64,000 rows of mnist8k and its moved copies (SCALE.md
sections 7 and 8): the network tells unmoved originals from resampled copies.

Three steps, on ``scale.py``'s old rows (``--keep-originals``: mnist8k, then 56,000 moved
copies, seed ``SEED``), caching in ``--work`` (default ``texture-work``, never committed):

- ``pretrain SEED``: the default network pretrained as ``gmvae train`` pretrains it on those rows
  (300 epochs capped at 9,600 steps: 38 epochs), its weights kept after epochs 19 and 38; the
  pretraining's learning rate is constant, so epoch 19 is the network of the earlier default
  (150 epochs, 4,800 steps), the same run cut short.
- ``probe SEED EPOCHS``: from those weights, how well a logistic regression tells the 8,000
  originals from 8,000 moved copies by their codes (3-fold cross-validation), and the default
  start's clusters: their accuracy and the share of originals in each.
- ``after SEED EPOCHS``: the rest of the default recipe (start, anchor, SVI) from those weights,
  printing each epoch's accuracy, the accuracy on the originals, and the agreement of the
  model's clusters with the start's (best one-to-one matching).

Labels score only.

    OMP_NUM_THREADS=2 python benchmarks/sweeps/texture.py pretrain 0
    OMP_NUM_THREADS=2 python benchmarks/sweeps/texture.py probe 0 38
    OMP_NUM_THREADS=1 python benchmarks/sweeps/texture.py after 0 38
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for starts.py
from starts import rows, source_rows  # noqa: E402

from pyro_gmvae import GMVAE, clustering_scores  # noqa: E402
from pyro_gmvae.config import RunConfig  # noqa: E402
from pyro_gmvae.rng import seed_everything  # noqa: E402
from pyro_gmvae.start import find_start  # noqa: E402
from pyro_gmvae.train import Trainer, default_recipe  # noqa: E402

N, ORIGINALS, KEPT = 64_000, 8_000, (19, 38)


def config_for(seed: int) -> RunConfig:
    config = RunConfig()
    config.train.seed = seed
    config.model.clusters = 10
    config.model.n_features, config.model.image_shape = 784, (28, 28)
    config.model.size_from_data()
    return config


def load(work: Path, seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray, GMVAE, RunConfig]:
    saved = np.load(work / f"rows{seed}.npz")
    config = config_for(seed)
    seed_everything(seed)
    model = GMVAE(config.model)
    model.load_state_dict(torch.load(work / f"net{seed}_{epochs}.pt")["weights"])
    return saved["x"].astype(np.float32) / 255, saved["y"], model, config


def pretrain(work: Path, seed: int) -> None:
    x, labels = rows(source_rows(None), N, 15.0, 0.1, seed, keep_originals=True)
    x = np.round(x * 255).astype(np.uint8)  # as scale.py writes them
    np.savez(work / f"rows{seed}.npz", x=x, y=labels)
    config = config_for(seed)
    seed_everything(seed)
    model = GMVAE(config.model)

    def keep(record: dict) -> None:
        print(record["epoch"], round(record["loss"], 3), flush=True)
        if record["epoch"] in KEPT:
            torch.save({"weights": model.state_dict()}, work / f"net{seed}_{record['epoch']}.pt")

    recipe = default_recipe(config.train)[:1]
    Trainer(
        model, x.astype(np.float32) / 255, config.train, recipe=recipe, progress=False,
        on_epoch=keep,
    ).run()  # fmt: skip


def probe(work: Path, seed: int, epochs: int) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x, labels, model, config = load(work, seed, epochs)
    recipe = default_recipe(config.train).without("pretrain")
    trainer = Trainer(model, x, config.train, recipe=recipe, labels=labels, progress=False)
    codes = trainer.codes()
    original = np.arange(len(x)) < ORIGINALS
    moved = np.random.default_rng(1).choice(np.flatnonzero(~original), ORIGINALS, replace=False)
    both = np.concatenate([np.flatnonzero(original), moved])
    told = cross_val_score(LogisticRegression(max_iter=2000), codes[both], original[both], cv=3)
    start = find_start("tsne", codes, trainer.host_rows(), 10, config.train, True)
    clusters = start.responsibilities.argmax(1)
    print(json.dumps({
        "originals_told_from_copies": float(told.mean()),
        "start": start.source, "start_scores": start.scores,
        "start_accuracy": clustering_scores(labels, clusters)["accuracy"],
        "originals_share": [round(float(original[clusters == k].mean()), 3) for k in range(10)],
        "labels": [np.bincount(labels[clusters == k], minlength=10).tolist() for k in range(10)],
    }))  # fmt: skip


def after(work: Path, seed: int, epochs: int) -> None:
    x, labels, model, config = load(work, seed, epochs)
    original = np.arange(len(x)) < ORIGINALS
    began = time.time()
    trainer: Trainer | None = None

    def score(record: dict) -> None:
        clusters = model.predict(x)
        start = trainer.assignments.cpu().numpy()
        print(json.dumps({
            "epoch": record["epoch"], "phase": record["phase"], "accuracy": record["accuracy"],
            "originals": clustering_scores(labels[original], clusters[original])["accuracy"],
            "agrees_with_start": clustering_scores(start, clusters)["accuracy"],
            "start_accuracy": clustering_scores(labels, start)["accuracy"],
            "seconds": round(time.time() - began),
        }), flush=True)  # fmt: skip

    recipe = default_recipe(config.train).without("pretrain")
    trainer = Trainer(
        model, x, config.train, recipe=recipe, labels=labels, progress=False, on_epoch=score
    )
    trainer.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["pretrain", "probe", "after"])
    parser.add_argument("seed", type=int)
    parser.add_argument("epochs", type=int, nargs="?", choices=KEPT, default=KEPT[-1])
    parser.add_argument("--work", type=Path, default=Path("texture-work"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step == "pretrain":
        pretrain(args.work, args.seed)
    else:
        {"probe": probe, "after": after}[args.step](args.work, args.seed, args.epochs)


if __name__ == "__main__":
    main()
