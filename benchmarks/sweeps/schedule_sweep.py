"""Sweep 2 (2026-11-27, H200): anchor/SVI schedules after the library's own start, per seed.

A variant ``A,B,S`` is A anchor epochs at KL weight B, then S SVI epochs, each from the same
pretrained network and the same start (the library's ``TrainConfig.init``, found once).

The results in ../results/h200-schedule-sweep/ came from this script's first version (commit
9dbc91a: ``git show 9dbc91a:benchmarks/sweeps/schedule_sweep.py``), which set private Trainer
state, run against the library at commit 42cdb5f. This version runs the same sweep through the
public API (a recipe of Pretrain, then per variant a Trainer whose recipe is Anchor and SVI begun
by a MixtureStart holding the start found once), so rerunning it measures today's library, not
that one: today's ``TrainConfig()`` defaults and start; pretraining seeded as ``Trainer.run``
seeds; and B weighs the KL terms (``-log p(x|z) + B KL``) where it then divided the likelihood
(``-log p(x|z) / B + KL``), the same objective up to the factor B, which Adam hardly sees but
gradient clipping does.
"""

import argparse
import copy
import dataclasses
import json
import os
import time

import pyro
import torch

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.evaluate import elbo_per_example
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.start import Start, find_start, one_hot
from pyro_gmvae.train import SVI, Anchor, MixtureStart, Pretrain, Recipe, Trainer


def holding(start: Start):
    """A start function that returns ``start``, found beforehand, whatever it is given."""

    def held_start(codes, data, n_clusters, config, uniform):
        return start

    return held_start


def schedule(anchor: int, beta: float, svi: int, start: Start, cfg: TrainConfig) -> Recipe:
    """``anchor`` epochs at KL weight ``beta``, then ``svi`` epochs, beginning with ``start``:
    the default recipe after pretraining."""
    begin = [MixtureStart(holding(start))]
    return Recipe(
        [
            Anchor(anchor, beta=beta, on_begin=begin, new_optimizer=True),
            SVI(
                svi,
                beta=cfg.beta,
                lr_decay=cfg.lr_decay,
                on_begin=() if anchor else begin,
                new_optimizer=not anchor,
            ),
        ]
    )


p = argparse.ArgumentParser()
p.add_argument("--data")
p.add_argument("--name")
p.add_argument("--seed", type=int)
p.add_argument("--variants", nargs="+")
p.add_argument("--out", default=".exp/out")
p.add_argument("--device", default="cuda")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--pretrain-epochs", type=int, help="default: TrainConfig's (a smoke run: fewer)")
a = p.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.out, exist_ok=True)
ds = load_data(a.data)
seed = a.seed
train, held_out = ds.split(0.2, seed=seed)
cfg = TrainConfig(seed=seed, device=a.device)
if a.pretrain_epochs is not None:
    cfg = dataclasses.replace(cfg, pretrain_epochs=a.pretrain_epochs)
pyro.set_rng_seed(seed)
model = GMVAE(ModelConfig(n_features=ds.n_features, image_shape=ds.image_shape))
K = model.n_clusters
pretrain = Recipe([Pretrain(cfg.pretrain_epochs)])
tr = Trainer(model, train.x, cfg, recipe=pretrain, labels=train.labels, progress=False)
t0 = time.time()
tr.run()
print(f"pretrain {time.time() - t0:.0f}s", flush=True)
base = copy.deepcopy(model.state_dict())
t0 = time.time()
codes = tr.codes()
found = find_start(
    cfg.init, codes, tr.x.cpu().numpy(), K, cfg, uniform_weights=not model.config.learn_weights
)
start = Start(one_hot(found.assignments, K), found.source, found.scores)  # hard, as it ran
sacc = clustering_scores(train.labels, found.assignments)["accuracy"]
print(f"start {found.source} {found.scores} acc {sacc:.3f} {time.time() - t0:.0f}s", flush=True)
for v in a.variants:
    A, B, S = v.split(",")
    A, B, S = int(A), float(B), int(S)
    model.load_state_dict(base)
    tr = Trainer(
        model,
        train.x,
        cfg,
        recipe=schedule(A, B, S, start, cfg),
        labels=train.labels,
        progress=False,
    )
    t0 = time.time()
    rec = dict(
        data=a.name,
        seed=seed,
        variant=v,
        source=found.source,
        scores=found.scores,
        start_acc=sacc,
    )
    traj = [round(r["accuracy"], 4) for r in tr.run()]
    rec |= clustering_scores(train.labels, model.predict(train.x))
    rec["held_acc"] = clustering_scores(held_out.labels, model.predict(held_out.x))["accuracy"]
    torch.manual_seed(1)
    rec["elbo"] = float(elbo_per_example(model, train.x, num_particles=2).mean())
    rec["traj"] = traj
    rec["sec"] = time.time() - t0
    print(json.dumps({k: x for k, x in rec.items() if k != "traj"}), flush=True)
    with open(f"{a.out}/{a.name}_{seed}.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
