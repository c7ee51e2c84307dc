"""Restarts of the mixture on a saved t-SNE map (from start_sweep.py's arrays): free weights
picked by likelihood against weights held at 1/K, and the silhouette of each map's pick.

    python benchmarks/sweeps/map_restarts.py ARRAYS.npz
"""

import sys
import time

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from pyro_gmvae.metrics import clustering_scores


class U(GaussianMixture):
    def _m_step(self, X, log_resp, **kw):
        super()._m_step(X, log_resp, **kw)
        self.weights_ = np.full(self.n_components, 1 / self.n_components)


A = np.load(sys.argv[1])
tot = {}
for data in ["mnist", "digits"]:
    for seed in range(5):
        y = A[f"labels_{data}_{seed}"]
        best = {}
        for s in ["codes50", "pix50"]:
            E = A[f"map_{data}_{seed}_{s}"]
            t = time.time()
            res = []
            labs = []
            for r in range(10):
                g = U(10, covariance_type="full", random_state=r, reg_covar=1e-4).fit(E)
                lab = g.predict(E)
                labs.append(lab)
                res.append((g.score(E), clustering_scores(y, lab)["accuracy"]))
            res = np.array(res)
            i = res[:, 0].argmax()
            sil = silhouette_score(E, labs[i])
            best[s] = (sil, res[i, 1])
            tot.setdefault((data, s), []).append(res[i, 1])
            print(
                data,
                seed,
                s,
                "accs",
                np.round(np.sort(res[:, 1]), 2),
                f"pick {res[i, 1]:.3f} sil {sil:.3f}  {time.time() - t:.1f}s",
                flush=True,
            )
        ch = max(best, key=lambda k: best[k][0])
        tot.setdefault((data, "silpick"), []).append(best[ch][1])
for k, v in tot.items():
    print(k, np.round(v, 3), round(np.mean(v), 3))
