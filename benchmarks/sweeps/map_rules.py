"""Label-free rules for choosing between the t-SNE maps of the codes and of the data (issue 14;
benchmarks/RESULTS.md, "Label-free rules for the map").

Step 1 pretrains the default encoder on DATA (seed, held-out fraction), makes both maps and their
uniform-weight mixtures as ``start.tsne_start`` does, and saves them to ``OUT.npz``; step 2 scores
every rule on saved cases and prints one line per case and candidate, with its accuracy (the
labels only score).

    OMP_NUM_THREADS=2 python benchmarks/sweeps/map_rules.py cache digits 1 0.2 /tmp/digits-1.npz
    OMP_NUM_THREADS=2 python benchmarks/sweeps/map_rules.py score /tmp/digits-1.npz ...
"""

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import NearestNeighbors

from pyro_gmvae import runs
from pyro_gmvae import start as S
from pyro_gmvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_gmvae.dataset import Dataset
from pyro_gmvae.metrics import cluster_accuracy
from pyro_gmvae.model import GMVAE
from pyro_gmvae.rng import seed_everything
from pyro_gmvae.train import Pretrain, Recipe, Trainer

K = 10


def pretrained(data: str, seed: int, fraction: float) -> tuple[Trainer, Dataset, Dataset | None]:
    """The default encoder pretrained as ``gmvae train`` does on DATA's training rows (``fraction``
    held out with ``seed``): the trainer, the training rows and the held-out ones."""
    config = RunConfig(
        data=DataConfig(data=data, heldout_fraction=fraction),
        model=ModelConfig(clusters=K),
        train=TrainConfig(seed=seed),
    )
    _, train, heldout = runs._training_data(config)
    config.model.n_features = train.x.shape[1]
    seed_everything(seed)
    model = GMVAE(config.model)
    pretrain = Pretrain(config.train.pretrain_epochs, max_steps=config.train.pretrain_steps)
    trainer = Trainer(model, train.x, config.train, recipe=Recipe([pretrain]), progress=False)
    trainer.run()
    return trainer, train, heldout


def cache(data: str, seed: int, fraction: float, out: str) -> None:
    trainer, train, _ = pretrained(data, seed, fraction)
    codes = trainer.codes()
    pca = S.principal_components(np.asarray(trainer.host_rows()), S.DATA_COMPONENTS, seed)
    saved = dict(codes=codes, pca=pca, labels=train.labels)
    both = np.hstack(
        [v / np.sqrt(v.var(0).sum()) for v in (codes - codes.mean(0), pca - pca.mean(0))]
    )
    for name, source in (("codes", codes), ("data", pca), ("joint", both)):
        saved["map_" + name] = S.tsne_map(source, 50.0, seed)
        saved["cl_" + name] = S.map_clusters(saved["map_" + name], K, 10, seed, True)
    np.savez(out, **saved)


def purity(space: np.ndarray, clusters: np.ndarray, k: int = 15) -> float:
    index = NearestNeighbors(n_neighbors=k + 1).fit(space)
    neighbours = index.kneighbors(space, return_distance=False)[:, 1:]
    return float((clusters[neighbours] == clusters[:, None]).mean())


def gaussian_agreement(space: np.ndarray, clusters: np.ndarray) -> float:
    mu = np.stack([space[clusters == k].mean(0) for k in range(K)])
    var = np.stack([space[clusters == k].var(0) + 1e-6 for k in range(K)])
    logp = -0.5 * (((space[:, None] - mu) ** 2) / var + np.log(var)).sum(-1)
    return float((logp.argmax(1) == clusters).mean())


def logistic(space: np.ndarray, clusters: np.ndarray) -> float:
    predicted = cross_val_predict(LogisticRegression(max_iter=300), space, clusters, cv=3)
    return float((predicted == clusters).mean())


def half_stability(embedding: np.ndarray, clusters: np.ndarray, draws: int = 6) -> float:
    rng = np.random.default_rng(0)
    scores = []
    for draw in range(draws):
        half = rng.choice(len(embedding), len(embedding) // 2, replace=False)
        gmm = S.UniformWeightsMixture(K, covariance_type="full", n_init=3, random_state=draw)
        scores.append(adjusted_rand_score(clusters, gmm.fit(embedding[half]).predict(embedding)))
    return float(np.mean(scores))


def elbow(embedding: np.ndarray) -> float:
    scaled = (embedding - embedding.mean(0)) / embedding.std()
    fits = [
        S.UniformWeightsMixture(k, covariance_type="full", n_init=4, random_state=0).fit(scaled)
        for k in (K, K + 1)
    ]
    return float(fits[0].score(scaled) - fits[1].score(scaled))  # higher: K is the elbow


def worst_cut(space: np.ndarray, clusters: np.ndarray, k: int = 15) -> float:
    """The largest share of a cluster's k-nearest-neighbour edges that cross to one other
    cluster (the smaller cluster's count): a mixture that cut one blob in two leaves a pair
    with many crossing edges. Negated, so that higher keeps."""
    index = NearestNeighbors(n_neighbors=k + 1).fit(space)
    neighbours = index.kneighbors(space, return_distance=False)[:, 1:]
    edges = np.zeros((K, K))
    np.add.at(edges, (np.repeat(clusters, k), clusters[neighbours].ravel()), 1)
    volume = edges.sum(1)
    crossing = edges + edges.T
    np.fill_diagonal(crossing, 0)
    return -float((crossing / np.minimum(volume[:, None], volume[None, :])).max())


def score(path: str) -> None:
    saved = np.load(path)
    labels = saved["labels"]
    for name in ("codes", "data", "joint"):
        clusters, embedding = saved["cl_" + name], saved["map_" + name]
        sample = dict(sample_size=min(len(labels), 10_000), random_state=0)
        rules = {
            "accuracy": cluster_accuracy(labels, clusters),
            "silhouette": S.separation(embedding, clusters, 0),
            "silhouette_codes": silhouette_score(saved["codes"], clusters, **sample),
            "silhouette_data": silhouette_score(saved["pca"], clusters, **sample),
            "purity": np.mean([purity(saved[v], clusters) for v in ("codes", "pca")]),
            "gaussian_codes": gaussian_agreement(saved["codes"], clusters),
            "logistic_codes": logistic(saved["codes"], clusters),
            "stability": half_stability(embedding, clusters),
            "elbow": elbow(embedding),
            "worst_cut": worst_cut(embedding, clusters),
        }
        print(path, name, " ".join(f"{k} {v:.3f}" for k, v in rules.items()), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        for path in sys.argv[2:]:
            score(path)
