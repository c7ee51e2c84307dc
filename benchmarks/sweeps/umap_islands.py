"""Why the UMAP maps of ``digits`` cluster worse than its pixels' t-SNE map (issue 14): the
start's mixture (full covariances, weights held at 1/K) with K, K + 1 and K + 2 components on
the 10-d UMAP maps (20 neighbours, ``min_dist=0``) of the codes and of the data, each
clustering's accuracy (one cluster a class) and many-to-one accuracy (each cluster its
majority class), and its two smallest clusters' sizes; with more than K components, also the
accuracy once the extra components with the fewest rows are dropped (each of their rows taken by
its most probable remaining component, the mixture's own responsibilities). A small island of one class that takes a
whole component shows as a smallest cluster of a few dozen rows and a many-to-one accuracy
well above the one-to-one. The network comes from ``after_start.py``'s cache. Labels score only.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/umap_islands.py DATA NAME SEED CACHE
"""

import json
import sys
from pathlib import Path

import numpy as np
from after_start import UMAP_NEIGHBORS, map_sources  # beside this script

from pyro_gmvae import start as starts
from pyro_gmvae.metrics import clustering_scores


def main(spec: str, name: str, seed: int, cache: Path) -> None:
    data, config, _, sources = map_sources(spec, name, seed, cache)
    k = int(data.labels.max()) + 1
    for source, x in sources.items():
        embedding = starts.umap_map(x, config.umap_components, UMAP_NEIGHBORS, seed)
        for n_clusters in (k, k + 1, k + 2):
            mixture = starts.fitted_mixture(
                embedding, n_clusters, "full", config.restarts, seed, True
            )
            responsibilities = mixture.predict_proba(embedding)
            found = responsibilities.argmax(1)
            scores = clustering_scores(data.labels, found)
            counts = np.bincount(found, minlength=n_clusters)
            sizes = sorted(counts)
            kept = np.argsort(counts)[n_clusters - k :]  # the k components with the most rows
            pruned = responsibilities[:, kept].argmax(1)
            record = {
                "data": name,
                "seed": seed,
                "source": source,
                "components": n_clusters,
                "accuracy": round(scores["accuracy"], 4),
                "many_to_one_accuracy": round(scores["many_to_one_accuracy"], 4),
                "smallest": [int(size) for size in sizes[:2]],
                "pruned_accuracy": round(clustering_scores(data.labels, pruned)["accuracy"], 4),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
