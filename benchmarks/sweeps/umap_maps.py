"""UMAP maps of the codes and of the data against the default t-SNE start, on the pretrained
networks that ``after_start.py`` cached (issue 14): each map's full-covariance mixture (the
``umap`` start's: 10-d, 20 neighbours, ``min_dist=0``, weights held at 1/K), its accuracy and
its silhouette and its stability (``start.stability``, the rule the t-SNE start keeps a map by),
beside the t-SNE start the cache holds. Labels score only.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/umap_maps.py DATA NAME SEED [CACHE [NEIGHBORS]]

``NEIGHBORS`` (default 20, N2D's) sets the UMAP maps' neighbours.
"""

import json
import sys
import time
from pathlib import Path

from after_start import map_sources  # beside this script

from pyro_gmvae import start as starts
from pyro_gmvae.metrics import clustering_scores


def main(spec: str, name: str, seed: int, cache: Path, neighbors: int = 20) -> None:
    data, _, info, sources = map_sources(spec, name, seed, cache)
    out = {"data": name, "seed": seed, "neighbors": neighbors}
    out["tsne_start"] = info["start"]["accuracy"]
    out |= {"tsne_source": info["source"], "tsne_scores": info["scores"]}
    for source, x in sources.items():
        began = time.perf_counter()
        embedding = starts.umap_map(x, 10, neighbors, seed)
        clusters = starts.map_clusters(embedding, 10, 10, seed, True)
        out[f"umap_{source}"] = {
            "acc": round(clustering_scores(data.labels, clusters)["accuracy"], 4),
            "sil": round(starts.separation(embedding, clusters, seed), 4),
            "stab": round(starts.stability(embedding, 10, 10, seed, True), 4),
            "s": round(time.perf_counter() - began, 1),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    cache = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".exp/after_start/cache")
    neighbors = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), cache, neighbors)
