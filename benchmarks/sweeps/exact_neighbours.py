"""The umap start on one trained network's codes of mnist8k: umap-learn's approximate neighbours
(NN-descent, today's) against exact ones (scikit-learn) passed as ``precomputed_knn``. Labels
only score. ``python exact_neighbours.py approx|exact SEEDS RUN_DIR OUT_DIR`` (SEEDS: 0,1,2,3;
RUN_DIR: a ``gmvae train`` run of mnist8k; the data from ``PYRO_GMVAE_MNIST8K``)."""

import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
import umap
from sklearn.neighbors import NearestNeighbors

from pyro_gmvae import metrics
from pyro_gmvae import start as S
from pyro_gmvae.config import TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.runs import open_run

mode, seeds, run_dir, out_dir = (
    sys.argv[1],
    [int(s) for s in sys.argv[2].split(",")],
    sys.argv[3],
    sys.argv[4],
)
data = load_data(os.environ["PYRO_GMVAE_MNIST8K"])
x, y = data.x, data.labels
run = open_run(run_dir)
with torch.no_grad():
    codes = run.model.encoder(torch.as_tensor(x))[0].double().numpy()


class ExactUMAP(umap.UMAP):
    """umap-learn's UMAP given scikit-learn's exact nearest neighbours of what it fits; the
    start's own ``umap_map`` makes it, with its settings, once ``umap.UMAP`` is this."""

    def fit(self, X, *args, **kwargs):
        dist, ind = NearestNeighbors(n_neighbors=self.n_neighbors).fit(X).kneighbors(X)
        self.precomputed_knn = (ind, dist.astype(np.float32), None)
        return super().fit(X, *args, **kwargs)


if mode == "exact":
    umap.UMAP = ExactUMAP
out = open(os.path.join(out_dir, f"{mode}.jsonl"), "a")
for seed in seeds:
    c = dataclasses.replace(TrainConfig(), seed=seed)
    t = time.perf_counter()
    st = S.umap_start(codes, x, 10, c, True)
    sec = time.perf_counter() - t
    accs = {k: float(metrics.cluster_accuracy(y, v.argmax(1))) for k, v in st.candidates.items()}
    rec = {
        "mode": mode,
        "seed": seed,
        "seconds": sec,
        "kept": st.source,
        "kept_acc": float(metrics.cluster_accuracy(y, st.responsibilities.argmax(1))),
        "accs": accs,
        "scores": st.scores,
    }
    out.write(json.dumps(rec) + "\n")
    out.flush()
    print(rec, flush=True)
