"""How well the pretrained codes reconstruct the rows against principal components of as many,
twice as many and 50 dimensions, on training and held-out rows (issue 14; benchmarks/RESULTS.md,
"Label-free rules for the map"): a candidate reason, read without labels, for preferring the
codes' t-SNE map or the data's. Mean squared error of E[x|z] (the default encoder, pretrained
as ``gmvae train`` does) and of the PCA reconstruction.

    OMP_NUM_THREADS=2 python benchmarks/sweeps/codes_vs_pca.py digits 0
"""

import sys

import numpy as np
from sklearn.decomposition import PCA

from pyro_gmvae import runs
from pyro_gmvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_gmvae.model import GMVAE
from pyro_gmvae.rng import seed_everything
from pyro_gmvae.train import Pretrain, Recipe, Trainer


def main(data: str, seed: int) -> None:
    config = RunConfig(
        data=DataConfig(data=data, heldout_fraction=0.2),
        model=ModelConfig(clusters=10),
        train=TrainConfig(seed=seed),
    )
    _, train, heldout = runs._training_data(config)
    config.model.n_features = train.x.shape[1]
    seed_everything(seed)
    model = GMVAE(config.model)
    pretrain = Pretrain(config.train.pretrain_epochs, max_steps=config.train.pretrain_steps)
    Trainer(model, train.x, config.train, recipe=Recipe([pretrain]), progress=False).run()
    rows = {"train": np.asarray(train.x, np.float64), "held": np.asarray(heldout.x, np.float64)}
    error = {f"codes_{k}": ((model.reconstruct(x) - x) ** 2).mean() for k, x in rows.items()}
    latent = model.config.latent_dim
    for n in (latent, 2 * latent, 50):
        pca = PCA(n, random_state=seed).fit(rows["train"])
        for k, x in rows.items():
            error[f"pca{n}_{k}"] = ((pca.inverse_transform(pca.transform(x)) - x) ** 2).mean()
    print(data, seed, " ".join(f"{k} {v:.5f}" for k, v in error.items()))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
