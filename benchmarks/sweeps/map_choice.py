"""Three label-free ways to let longer pretraining be the default without losing `digits`' map
(issue 14): stop pretraining where held-out reconstruction stops improving; keep the t-SNE map
whose clusters give the model the higher ELBO after the anchor; or make no choice, with one
mixture on both maps side by side.

``heldout DATA NAME SEED EPOCHS``: pretrain the default network on 90% of the rows (drawn with
the seed) for ``EPOCHS`` epochs, and every 10 epochs print the other 10%'s reconstruction loss,
-log p(x | z = mean of q(z|x)) per row, the pretraining objective.

``elbo DATA NAME SEED EPOCHS``: pretrain on all rows for ``EPOCHS`` epochs (at most
``32 * EPOCHS`` steps, mnist8k's epochs), make both maps of the default start (the codes' and the
data's 50 principal components' t-SNE maps, each with its uniform-weight mixture, as
``tsne_start``), and a mixture on both maps side by side (``side_by_side``, one 4-d space). Then,
from the same pretrained weights, run the default anchor (holding each row at that map's
clusters) and SVI once per map, and print the ELBO per row (y summed, 4 draws of z) after each.

Labels score each candidate only. One JSON line per result on stdout and in ``--out``:

    OMP_NUM_THREADS=1 python benchmarks/sweeps/map_choice.py elbo digits digits 1 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from after_start import holding  # beside this script

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.evaluate import elbo_per_example
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.start import (
    DATA_COMPONENTS,
    Start,
    map_clusters,
    one_hot,
    principal_components,
    separation,
    side_by_side,
    tsne_map,
)
from pyro_gmvae.train import MixtureStart, Pretrain, Recipe, Trainer, default_recipe


def emit(record: dict, out: Path) -> None:
    print(json.dumps(record), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def heldout(a: argparse.Namespace) -> None:
    data = load_data(a.data)
    x = np.asarray(data.x)
    perm = np.random.default_rng(a.seed).permutation(len(x))
    held, train = np.sort(perm[: len(x) // 10]), np.sort(perm[len(x) // 10 :])
    xh = torch.as_tensor(x[held], dtype=torch.float32)
    pyro.set_rng_seed(a.seed)
    model = GMVAE(ModelConfig(n_features=data.n_features, image_shape=data.image_shape))
    cfg = TrainConfig(seed=a.seed, device="cpu")

    def at(epoch: int):
        def evaluate(trainer: Trainer) -> None:
            with torch.no_grad():
                model.eval()
                loc, _ = model.encoder(xh)
                loss = -model.likelihood(model.decoder(loc)).log_prob(xh).mean().item()
                model.train()
            emit({"data": a.name, "seed": a.seed, "epoch": epoch, "heldout_loss": loss}, a.out)

        return evaluate

    tens = a.epochs // 10
    phases = [
        Pretrain(10, name=f"p{k}", new_optimizer=k == 0, on_begin=[at(10 * k)]) for k in range(tens)
    ]
    Trainer(model, x[train], cfg, recipe=Recipe(phases), progress=False).run()
    at(10 * tens)(None)


def elbo(a: argparse.Namespace) -> None:
    data = load_data(a.data)
    cfg = TrainConfig(
        seed=a.seed, device="cpu", pretrain_epochs=a.epochs, pretrain_steps=32 * a.epochs
    )
    pyro.set_rng_seed(a.seed)
    model = GMVAE(ModelConfig(n_features=data.n_features, image_shape=data.image_shape))
    pretrain = Recipe([default_recipe(cfg)["pretrain"]])
    trainer = Trainer(model, data.x, cfg, recipe=pretrain, progress=False)
    trainer.run()
    codes, rows = trainer.codes(), trainer.host_rows()
    k, seed, uniform = model.n_clusters, a.seed, not model.config.learn_weights
    maps = {
        "codes": tsne_map(codes, cfg.tsne_perplexity, seed, cfg.tsne_iterations),
        "data": tsne_map(
            principal_components(rows, DATA_COMPONENTS, seed),
            cfg.tsne_perplexity,
            seed,
            cfg.tsne_iterations,
        ),
    }
    maps["both"] = side_by_side(maps["codes"], maps["data"])
    clusters = {name: map_clusters(m, k, cfg.restarts, seed, uniform) for name, m in maps.items()}
    pretrained = {key: value.clone() for key, value in model.state_dict().items()}

    def per_row_elbo() -> float:
        torch.manual_seed(0)
        return float(elbo_per_example(model, data.x, num_particles=4).mean())

    def scored(labels) -> float:
        return clustering_scores(data.labels, labels)["accuracy"]

    for name, labels in clusters.items():
        record = {"data": a.name, "seed": seed, "pretrain_epochs": a.epochs, "map": name}
        record["start_accuracy"] = scored(labels)
        if name == "both":  # the choice-free candidate: its start only
            emit(record, a.out)
            continue
        record["silhouette"] = separation(maps[name], labels, seed)
        model.load_state_dict(pretrained)
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        after_anchor = {}

        def mark(trainer: Trainer, into=after_anchor) -> None:
            into["elbo"] = per_row_elbo()
            into["accuracy"] = scored(trainer.model.predict(data.x))

        recipe = default_recipe(cfg)
        start = Start(one_hot(labels, k), source=name)
        anchor = dataclasses.replace(recipe["anchor"], on_begin=[MixtureStart(holding(start))])
        svi = dataclasses.replace(recipe["svi"], on_begin=[mark])
        began = time.time()
        Trainer(model, data.x, cfg, recipe=Recipe([anchor, svi]), progress=False).run()
        record |= {
            "anchor_elbo": after_anchor["elbo"],
            "anchor_accuracy": after_anchor["accuracy"],
            "final_elbo": per_row_elbo(),
            "final_accuracy": scored(model.predict(data.x)),
            "seconds": time.time() - began,
        }
        emit(record, a.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["heldout", "elbo"])
    p.add_argument("data")
    p.add_argument("name")
    p.add_argument("seed", type=int)
    p.add_argument("epochs", type=int)
    p.add_argument("--out", type=Path, default=Path(".exp/map_choice/results.jsonl"))
    a = p.parse_args()
    (heldout if a.what == "heldout" else elbo)(a)


if __name__ == "__main__":
    main()
