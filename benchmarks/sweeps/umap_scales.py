"""The umap start's neighbourhood sizes (issue 14), on cached networks: for each size, the joint
UMAP map (codes and data side by side) under the balanced rule, its clusters' accuracy (labels
score only), their sizes and their evenness (``start.evenness``), by which the start keeps one
map of several. Prints one JSON line per size.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/umap_scales.py DATA NAME SEED CACHE [SIZES]

``SIZES``: comma-separated neighbours per point (default: the start's, ``TrainConfig().umap_neighbors``).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from after_start import map_sources  # beside this script

from pyro_gmvae import start as starts
from pyro_gmvae.config import TrainConfig
from pyro_gmvae.metrics import clustering_scores


def main(spec: str, name: str, seed: int, cache: Path, sizes: list[int]) -> None:
    data, config, _, sources = map_sources(spec, name, seed, cache)
    joint = starts.side_by_side(sources["codes"], sources["data"])
    k = int(data.labels.max()) + 1
    for neighbors in sizes:
        t0 = time.time()
        embedding = starts.umap_map(joint, config.umap_components, neighbors, seed)
        found = starts.balanced_clusters(embedding, k, config.restarts, seed)
        scores = clustering_scores(data.labels, found)
        record = {
            "data": name,
            "seed": seed,
            "neighbors": neighbors,
            "accuracy": round(scores["accuracy"], 4),
            "nmi": round(scores["nmi"], 4),
            "sizes": sorted(np.bincount(found, minlength=k).tolist()),
            "evenness": round(starts.evenness(found, k), 5),
            "s": round(time.time() - t0, 1),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    given = sys.argv[5] if len(sys.argv) > 5 else None
    sizes = [int(s) for s in given.split(",")] if given else list(TrainConfig().umap_neighbors)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sizes)
