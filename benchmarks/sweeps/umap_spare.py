"""A start rule for small islands on UMAP maps (issue 14), measured on cached networks: every
UMAP map of ``digits`` holds an island of 27 ones to which a K-component mixture gives a whole
component, merging two classes elsewhere (``umap_islands.py``). The start already assumes classes
of about equal size (the mixture's weights are held at 1/K), so a component holding fewer than
half of a 1/K share is not taken for a class: the mixture is fitted with one component more, the
component with the fewest rows is dropped (its rows to their most probable remaining component),
and so on until the K kept components each hold at least half of a 1/K share (at most K extra).
For the codes' and the data's UMAP maps this prints the rule's accuracy, how many components it
fitted, and the stability of the rule's clusters (each random half runs the rule, the two
clusterings of all points compared by the adjusted Rand index, as ``start.stability``), the
score that would choose between the two maps. Labels score only.

``joint`` is one UMAP map of the codes and the data side by side (``start.side_by_side``),
which has no choice to make.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/umap_spare.py DATA NAME SEED CACHE [SOURCE ...]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from after_start import UMAP_NEIGHBORS, map_sources  # beside this script
from sklearn.metrics import adjusted_rand_score

from pyro_gmvae import start as starts
from pyro_gmvae.metrics import clustering_scores


def spare_clusters(embedding, k, restarts, seed, uniform=True, fit=None):
    """The rule above: clusters ``(N,)`` of all points, from a mixture fitted to ``fit`` (row
    indices; all rows when None); and the number of components fitted. On all rows it is the
    library's ``start.balanced_clusters`` (``main`` checks that they agree); the halves of the
    stability score need the fit on some rows and the clusters of all."""
    fit = np.arange(len(embedding)) if fit is None else fit
    floor = len(fit) / (2 * k)
    for extra in range(k + 1):
        mixture = starts.fitted_mixture(embedding[fit], k + extra, "full", restarts, seed, uniform)
        responsibilities = mixture.predict_proba(embedding)
        counts = np.bincount(responsibilities[fit].argmax(1), minlength=k + extra)
        kept = np.argsort(counts, kind="stable")[extra:]
        found = responsibilities[:, kept].argmax(1)
        if np.bincount(found[fit], minlength=k).min() >= floor:
            break
    return found, k + extra


def spare_stability(embedding, k, restarts, seed, splits=starts.STABILITY_SPLITS):
    n = len(embedding)
    half = min(n, max(n // 2, k))
    rng = np.random.default_rng([seed, n])
    agreement = []
    for split in range(splits):
        order = rng.permutation(n)
        a, _ = spare_clusters(embedding, k, restarts, seed + 1 + split, fit=order[:half])
        b, _ = spare_clusters(embedding, k, restarts, seed + 1 + split, fit=order[n - half :])
        agreement.append(adjusted_rand_score(a, b))
    return float(np.mean(agreement))


def main(spec: str, name: str, seed: int, cache: Path, wanted: list[str]) -> None:
    data, config, _, sources = map_sources(spec, name, seed, cache)
    sources["joint"] = starts.side_by_side(sources["codes"], sources["data"])
    k = int(data.labels.max()) + 1
    for source in wanted or ["codes", "data"]:
        x = sources[source]
        t0 = time.time()
        embedding = starts.umap_map(x, config.umap_components, UMAP_NEIGHBORS, seed)
        found, fitted = spare_clusters(embedding, k, config.restarts, seed)
        library = starts.balanced_clusters(embedding, k, config.restarts, seed)
        assert (found == library).all(), "the sweep's rule is no longer the library's"
        plain = starts.map_clusters(embedding, k, config.restarts, seed, True)
        record = {
            "data": name,
            "seed": seed,
            "source": source,
            "fitted": fitted,
            "accuracy": round(clustering_scores(data.labels, found)["accuracy"], 4),
            "nmi": round(clustering_scores(data.labels, found)["nmi"], 4),
            "plain_accuracy": round(clustering_scores(data.labels, plain)["accuracy"], 4),
            "stability": round(spare_stability(embedding, k, config.restarts, seed), 4),
            "plain_stability": round(
                starts.stability(embedding, k, config.restarts, seed, True, n_jobs=1), 4
            ),
            "s": round(time.time() - t0, 1),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
