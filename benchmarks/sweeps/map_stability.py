"""The rule between the start's two t-SNE maps: the silhouette of each map's clusters (the rule
until 2026-12-05) against their stability between random halves of the map (the rule since,
``pyro_gmvae.start.stability``), on networks pretrained for ``EPOCHS`` epochs.

``DATA NAME SEED EPOCHS``: pretrain the default network on all rows for ``EPOCHS`` epochs (at
most ``32 * EPOCHS`` steps, mnist8k's epochs), or load its weights from ``--cache`` (a file
``NAME_SEED_EPOCHS.pt`` holding ``{"weights": state_dict}``, as ``map_choice.py`` caches them),
make both maps of the default start (the codes' and the data's 50 principal components' t-SNE
maps, each with the start's uniform-weight mixture), and print for each map the silhouette, the
stability (with ``--splits`` splits) and the accuracy of its clusters. Labels score only.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/map_stability.py digits digits 1 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.start import (
    DATA_COMPONENTS,
    STABILITY_SPLITS,
    fitted_mixture,
    principal_components,
    separation,
    stability,
    tsne_map,
)
from pyro_gmvae.train import Recipe, Trainer, default_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("name")
    parser.add_argument("seed", type=int)
    parser.add_argument("epochs", type=int)
    parser.add_argument("--splits", type=int, default=STABILITY_SPLITS)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results/sweep-cache"))
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/sweep-map-stability/results.jsonl")
    )
    a = parser.parse_args()
    data = load_data(a.data)
    config = TrainConfig(
        seed=a.seed, device="cpu", pretrain_epochs=a.epochs, pretrain_steps=32 * a.epochs
    )
    pyro.set_rng_seed(a.seed)
    model = GMVAE(ModelConfig(n_features=data.n_features, image_shape=data.image_shape))
    path = a.cache / f"{a.name}_{a.seed}_{a.epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=False)["weights"])
    else:
        recipe = Recipe([default_recipe(config)["pretrain"]])
        Trainer(model, data.x, config, recipe=recipe, progress=False).run()
        a.cache.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": model.state_dict()}, path)
    model.eval()
    x = np.asarray(data.x, dtype=np.float32)
    with torch.no_grad():
        codes = model._batched(lambda b: model.encoder(b)[0], x).double().numpy()
    record = {"dataset": a.name, "seed": a.seed, "pretrain_epochs": a.epochs, "splits": a.splits}
    sources = {"codes": codes, "data": principal_components(x, DATA_COMPONENTS, a.seed)}
    for name, source in sources.items():
        embedding = tsne_map(source, config.tsne_perplexity, a.seed, config.tsne_iterations)
        clusters = fitted_mixture(embedding, 10, "full", config.restarts, a.seed, True)
        labels = clusters.predict(embedding)
        mapped = time.perf_counter()
        score = stability(embedding, 10, config.restarts, a.seed, True, a.splits)
        record[name] = {
            "silhouette": round(separation(embedding, labels, a.seed), 4),
            "stability": round(score, 4),
            "accuracy": round(clustering_scores(data.labels, labels)["accuracy"], 4),
            "stability_seconds": round(time.perf_counter() - mapped, 1),
        }
    for rule in ("silhouette", "stability"):
        record[f"kept_by_{rule}"] = max(("codes", "data"), key=lambda n: record[n][rule])
    print(json.dumps(record), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
