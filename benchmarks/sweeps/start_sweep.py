"""Sweep 1 (2026-11-27, H200): t-SNE starts from the codes and from the data's PCA-50, each
with several anchor/SVI schedules, per seed; saves each map, the codes and the labels.

A variant ``A,B,S,lr`` is A anchor epochs at KL weight B, then S SVI epochs, at learning rate lr,
each from the same pretrained network, begun by a MixtureStart holding the start's clusters.

The results in ../results/h200-start-sweep/ came from this script's first version (commit
9dbc91a: ``git show 9dbc91a:benchmarks/sweeps/start_sweep.py``), which set private Trainer state,
run against the library at commit cb6bd40 (free-weight mixture on the map, 5 restarts), one
process per data set and seed, as benchmarks/sweeps/README.md shows. This version runs the same
sweep through the public API, so rerunning it measures today's library, not that one: today's
``TrainConfig()`` defaults; pretraining seeded as ``Trainer.run`` seeds (and cached as the
model's weights, in files of another name); and B weighs the KL terms (``-log p(x|z) + B KL``)
where it then divided the likelihood (``-log p(x|z) / B + KL``), the same objective up to the
factor B, which Adam hardly sees but gradient clipping does.
"""

import argparse
import copy
import dataclasses
import json
import os
import time

import numpy as np
import pyro
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.evaluate import elbo_per_example
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.start import Start, one_hot
from pyro_gmvae.train import SVI, Anchor, MixtureStart, Pretrain, Recipe, Trainer

p = argparse.ArgumentParser()
p.add_argument("--data")
p.add_argument("--name")
p.add_argument("--seeds", type=int, nargs="+", default=[0])
p.add_argument("--variants", nargs="+", default=["5,10,50,1e-3"])
p.add_argument("--starts", nargs="+", default=["codes50", "pix50"])
p.add_argument("--cache", default=".exp/cache")
p.add_argument("--out", default=".exp/out")
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--pretrain-epochs", type=int, help="default: TrainConfig's (a smoke run: fewer)")
a = p.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.cache, exist_ok=True)
os.makedirs(a.out, exist_ok=True)
ds = load_data(a.data)


def acc(lab, pred):
    return clustering_scores(lab, pred)


def elbo(model, x):
    torch.manual_seed(123)
    return float(elbo_per_example(model, x, num_particles=2).mean())


def holding(start: Start):
    """A start function that returns ``start``, found beforehand, whatever it is given."""

    def held_start(codes, data, n_clusters, config, uniform):
        return start

    return held_start


def after_anchor(anchor_epochs: int, model, x, rec: dict):
    """An ``on_epoch`` callback: the ELBO and the accuracy after the last anchor epoch, in rec."""

    def record(r):
        if r["phase"] == "anchor" and r["epoch"] == anchor_epochs:
            rec["anchor_elbo"] = elbo(model, x)
            rec["anchor_acc"] = r["accuracy"]

    return record


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


for seed in a.seeds:
    train, held = ds.split(0.2, seed=seed)
    cfg = TrainConfig(seed=seed, device=a.device)
    if a.pretrain_epochs is not None:
        cfg = dataclasses.replace(cfg, pretrain_epochs=a.pretrain_epochs)
    pyro.set_rng_seed(seed)
    model = GMVAE(ModelConfig(n_features=ds.n_features, image_shape=ds.image_shape))
    pretrain = Recipe([Pretrain(cfg.pretrain_epochs)])
    tr = Trainer(model, train.x, cfg, recipe=pretrain, labels=train.labels, progress=False)
    cpath = f"{a.cache}/{a.name}_{seed}_{cfg.pretrain_epochs}_model.pt"
    t0 = time.time()
    if os.path.exists(cpath):
        model.load_state_dict(torch.load(cpath))
    else:
        tr.run()
        torch.save(model.state_dict(), cpath)
    print(f"{a.name} seed {seed} pretrain {time.time() - t0:.0f}s", flush=True)
    base = copy.deepcopy(model.state_dict())
    codes = tr.codes()
    X = train.x.numpy() if torch.is_tensor(train.x) else np.asarray(train.x)
    starts = {}
    start_info = {}
    np.save(f"{a.out}/codes_{a.name}_{seed}.npy", codes.astype(np.float32))
    np.save(f"{a.out}/labels_{a.name}_{seed}.npy", train.labels)
    for s in a.starts:
        t0 = time.time()
        perp = float(s.lstrip("codespix") or 50)
        if s.startswith("codes"):
            src = codes
        else:
            src = PCA(min(50, X.shape[1]), random_state=seed).fit_transform(X)
        E = TSNE(
            2, perplexity=min(perp, (len(src) - 1) / 3), init="pca", random_state=seed
        ).fit_transform(src)
        g = GaussianMixture(
            10, covariance_type="full", n_init=5, random_state=seed, reg_covar=1e-4
        ).fit(E)
        lab = g.predict(E)
        starts[s] = lab
        np.save(f"{a.out}/map_{a.name}_{seed}_{s}.npy", E)
        info = dict(
            sil=silhouette_score(E, lab),
            ch=calinski_harabasz_score(E, lab),
            db=davies_bouldin_score(E, lab),
            ll=g.score(E),
        )
        start_info[s] = info
        print(
            f"  start {s}: {acc(train.labels, lab)['accuracy']:.3f} ({time.time() - t0:.0f}s)",
            {k: round(v, 3) for k, v in info.items()},
            flush=True,
        )
    for s, lab in starts.items():
        for v in a.variants:
            A, B, S, lr = v.split(",")
            A, B, S, lr = int(A), float(B), int(S), float(lr)
            model.load_state_dict(base)
            config = dataclasses.replace(cfg, lr=lr)
            recipe = schedule(A, B, S, Start(one_hot(lab, 10), s), config)
            rec = {
                "data": a.name,
                "seed": seed,
                "start": s,
                "variant": v,
                "start_acc": acc(train.labels, lab)["accuracy"],
                **{"start_" + k: float(x) for k, x in start_info[s].items()},
            }
            tr = Trainer(
                model,
                train.x,
                config,
                recipe=recipe,
                labels=train.labels,
                progress=False,
                on_epoch=after_anchor(A, model, train.x, rec),
            )
            t0 = time.time()
            traj = [round(r["accuracy"], 4) for r in tr.run()]
            rec["final_elbo"] = elbo(model, train.x)
            rec |= {k: v_ for k, v_ in acc(train.labels, model.predict(train.x)).items()}
            rec["held_acc"] = acc(held.labels, model.predict(held.x))["accuracy"]
            rec["traj"] = traj
            rec["sec"] = time.time() - t0
            print(
                "  ",
                json.dumps(
                    {
                        k: (round(x, 4) if isinstance(x, float) else x)
                        for k, x in rec.items()
                        if k != "traj"
                    }
                ),
                flush=True,
            )
            print("   traj", traj, flush=True)
            with open(f"{a.out}/{a.name}_{seed}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
