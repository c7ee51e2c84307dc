"""Four maps of one pretrained network (issue 14): the t-SNE and the UMAP map of the codes and of
the data's first 50 principal components, each clustered by the start's mixture (full
covariances, weights held at 1/K), with each map's accuracy and the adjusted Rand index between
every two. A label-free rule tried here: keep the map whose clusters agree most with the other
three (the medoid partition of a cluster ensemble, Strehl and Ghosh 2002). Labels score only.
The network and the default start come from ``after_start.py``'s cache (pretrained there when
absent).

    OMP_NUM_THREADS=1 python benchmarks/sweeps/four_maps.py DATA NAME SEED CACHE
"""

import json
import sys
import time
from pathlib import Path

from after_start import UMAP_NEIGHBORS, map_sources  # beside this script
from sklearn.metrics import adjusted_rand_score

from pyro_gmvae import start as starts
from pyro_gmvae.metrics import clustering_scores


def main(spec: str, name: str, seed: int, cache: Path) -> None:
    data, config, info, sources = map_sources(spec, name, seed, cache)
    out = {"data": name, "seed": seed, "tsne_kept": info["source"]}
    clusters = {}
    for source, x in sources.items():
        for kind in ("tsne", "umap"):
            began = time.perf_counter()
            if kind == "tsne":
                embedding = starts.tsne_map(x, config.tsne_perplexity, seed)
            else:
                embedding = starts.umap_map(x, config.umap_components, UMAP_NEIGHBORS, seed)
            found = starts.map_clusters(embedding, 10, config.restarts, seed, True)
            clusters[f"{kind}_{source}"] = found
            out[f"{kind}_{source}"] = {
                "acc": round(clustering_scores(data.labels, found)["accuracy"], 4),
                "s": round(time.perf_counter() - began, 1),
            }
    names = list(clusters)
    agreement = {
        a: sum(adjusted_rand_score(clusters[a], clusters[b]) for b in names if b != a)
        for a in names
    }
    out["ari_with_others"] = {a: round(v, 3) for a, v in agreement.items()}
    out["medoid_keeps"] = max(agreement, key=agreement.get)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
