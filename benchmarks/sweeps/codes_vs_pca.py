"""How well the pretrained codes reconstruct the rows against principal components of as many,
twice as many and 50 dimensions, on training and held-out rows (issue 14; benchmarks/RESULTS.md,
"Label-free rules for the map"): a candidate reason, read without labels, for preferring the
codes' t-SNE map or the data's. Mean squared error of E[x|z] (the default encoder, pretrained
as ``gmvae train`` does) and of the PCA reconstruction.

    OMP_NUM_THREADS=2 python benchmarks/sweeps/codes_vs_pca.py digits 0
"""

import sys

import numpy as np
from map_rules import pretrained  # beside this script
from sklearn.decomposition import PCA


def main(data: str, seed: int) -> None:
    trainer, train, heldout = pretrained(data, seed, 0.2)
    model = trainer.model
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
