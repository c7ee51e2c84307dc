"""Sweep 2 (2026-11-27, H200): anchor/SVI schedules after the library's own start
(``Trainer.init_mixture``, commit 42cdb5f), per seed. Results: ../results/h200-schedule-sweep/.

A variant ``A,B,S`` is A anchor epochs at KL weight B, then S SVI epochs.
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

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.evaluate import elbo_per_example
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.train import Trainer, _ScaleSite

p = argparse.ArgumentParser()
p.add_argument("--data")
p.add_argument("--name")
p.add_argument("--seed", type=int)
p.add_argument("--variants", nargs="+")
p.add_argument("--out", default=".exp/out")
p.add_argument("--device", default="cuda")
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.out, exist_ok=True)
ds = load_data(a.data)
seed = a.seed
train, held = ds.split(0.2, seed=seed)
cfg = TrainConfig(seed=seed, device=a.device)
pyro.set_rng_seed(seed)
model = GMVAE(ModelConfig(n_features=ds.n_features, image_shape=ds.image_shape))
tr = Trainer(model, train.x, cfg, labels=train.labels, progress=False)
t0 = time.time()
while tr.epoch < cfg.pretrain_epochs:
    tr._run_epoch()
print(f"pretrain {time.time() - t0:.0f}s", flush=True)
base = copy.deepcopy(tr.state_dict())
t0 = time.time()
tr.init_mixture()
codes = tr._codes()
assign = tr.assignments.cpu().numpy()
sacc = clustering_scores(train.labels, assign)["accuracy"]
print(
    f"start {tr.start_source} {tr.start_scores} acc {sacc:.3f} {time.time() - t0:.0f}s", flush=True
)
for v in a.variants:
    A, B, S = v.split(",")
    A, B, S = int(A), float(B), int(S)
    tr.load_state_dict(copy.deepcopy(base))
    tr.history = []
    tr.config = dataclasses.replace(cfg, anchor_epochs=A, anchor_beta=B, epochs=S)
    tr.anchor_epochs = A
    tr._anchor_model = _ScaleSite("x", 1.0 / B)(model.model)
    pyro.set_rng_seed(seed)
    tr.start_mixture(np.eye(10)[assign], codes)
    tr.mixture_ready = True
    tr.optimizer, tr.scheduler = tr._make_optimizer()
    t0 = time.time()
    traj = []
    rec = dict(
        data=a.name,
        seed=seed,
        variant=v,
        source=tr.start_source,
        scores=tr.start_scores,
        start_acc=sacc,
    )
    while tr.epoch < tr.total_epochs:
        r = tr._run_epoch()
        traj.append(round(r["accuracy"], 4))
    rec |= clustering_scores(train.labels, model.predict(train.x))
    rec["held_acc"] = clustering_scores(held.labels, model.predict(held.x))["accuracy"]
    torch.manual_seed(1)
    rec["elbo"] = float(elbo_per_example(model, train.x, num_particles=2).mean())
    rec["traj"] = traj
    rec["sec"] = time.time() - t0
    print(json.dumps({k: x for k, x in rec.items() if k != "traj"}), flush=True)
    with open(f"{a.out}/{a.name}_{seed}.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
