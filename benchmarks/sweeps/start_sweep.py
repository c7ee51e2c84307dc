"""Sweep 1 (2026-11-27, H200): t-SNE starts from the codes and from the data's PCA-50, each
with several anchor/SVI schedules, per seed; saves each map, the codes and the labels.

Ran against commit cb6bd40 (free-weight mixture on the map, 5 restarts), one process per data
set and seed, as benchmarks/sweeps/README.md shows. Results: ../results/h200-start-sweep/.
"""

import argparse
import copy
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
from pyro_gmvae.train import Trainer, _ScaleSite

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


for seed in a.seeds:
    train, held = ds.split(0.2, seed=seed)
    cfg = TrainConfig(seed=seed, device=a.device)
    pyro.set_rng_seed(seed)
    model = GMVAE(ModelConfig(n_features=ds.n_features, image_shape=ds.image_shape))
    tr = Trainer(model, train.x, cfg, labels=train.labels, progress=False)
    cpath = f"{a.cache}/{a.name}_{seed}.pt"
    t0 = time.time()
    if os.path.exists(cpath):
        tr.load_state_dict(torch.load(cpath, weights_only=False))
    else:
        while tr.epoch < cfg.pretrain_epochs:
            tr._run_epoch()
        torch.save(tr.state_dict(), cpath)
    print(f"{a.name} seed {seed} pretrain {time.time() - t0:.0f}s", flush=True)
    base = copy.deepcopy(tr.state_dict())
    codes = tr._codes()
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
            tr.load_state_dict(copy.deepcopy(base))
            tr.history = []
            import dataclasses

            tr.config = dataclasses.replace(cfg, anchor_epochs=A, anchor_beta=B, epochs=S, lr=lr)
            tr.anchor_epochs = A
            tr._anchor_model = _ScaleSite("x", 1.0 / B)(model.model)
            pyro.set_rng_seed(seed)
            tr.start_mixture(np.eye(10)[lab], codes)
            tr.mixture_ready = True
            tr.optimizer, tr.scheduler = tr._make_optimizer()
            t0 = time.time()
            rec = {
                "data": a.name,
                "seed": seed,
                "start": s,
                "variant": v,
                "start_acc": acc(train.labels, lab)["accuracy"],
                **{"start_" + k: float(x) for k, x in start_info[s].items()},
            }
            traj = []
            while tr.epoch < tr.total_epochs:
                r = tr._run_epoch()
                traj.append(round(r["accuracy"], 4))
                if tr.epoch == cfg.pretrain_epochs + A:
                    rec["anchor_elbo"] = elbo(model, train.x)
                    rec["anchor_acc"] = r["accuracy"]
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
