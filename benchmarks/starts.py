"""The mixture starts side by side, by time and start accuracy, at 8,000 to 64,000 MNIST rows.

One autoencoder is pretrained on all of mnist8k (the default network and pretraining, seed 0;
cached in ``OUT/pretrained``), as ``gmvae train`` pretrains before its start. The rows for size N
are mnist8k itself followed by randomly shifted and rotated copies of it (made on the fly with
the training augmentation's own function, rotations up to ``--rotation`` degrees and shifts up to
``--shift`` of the width, never written to disk), each with its original's label; the pretrained
encoder codes them, and each start (``--starts``, names of ``pyro_gmvae.start.STARTS``) clusters
the codes into K=10, timed. Labels score the result only.

Prints one row per (start, N) and writes them all to ``OUT/starts.json`` after each
measurement (an existing file is kept, so an interrupted benchmark resumes). A start whose time
at the previous size passed ``--budget`` seconds is not run at larger sizes.

    OMP_NUM_THREADS=2 python benchmarks/starts.py --out benchmarks/results/starts
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from clustering import machine_info  # beside this script

from pyro_gmvae import GMVAE, Pretrain, Recipe, fit, load_data
from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.files import atomic_write_text
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.start import Start, find_start, map_clusters, one_hot, register_start
from pyro_gmvae.train import augment_images

from _paths import resolve_mnist8k


@register_start("opentsne")
def opentsne_start(
    codes: np.ndarray, data: np.ndarray, n_clusters: int, config: TrainConfig, uniform: bool
) -> Start:
    """The library's ``tsne`` start on the codes alone, with openTSNE's FFT-accelerated map
    (linear in N, approximate neighbours) instead of scikit-learn's Barnes-Hut with exact
    neighbours. Measured here only: it lost to ``umap`` on time and accuracy at every size, so
    the library does not carry it (``pip install openTSNE`` to run it)."""
    from openTSNE import TSNE

    perplexity = min(config.tsne_perplexity, max(1.0, (len(codes) - 1) / 3))
    embedding = TSNE(
        2,
        perplexity=perplexity,
        initialization="pca",
        negative_gradient_method="fft",
        n_jobs=-1,
        random_state=config.seed,
        verbose=False,
    ).fit(codes)
    labels = map_clusters(np.asarray(embedding), n_clusters, config.restarts, config.seed, uniform)
    return Start(one_hot(labels, n_clusters), source="codes")


def pretrained(out: Path, data, seed: int) -> GMVAE:
    """The default network pretrained on ``data`` for the default epochs, cached in ``out``."""
    path = out / "pretrained"
    if (path / "checkpoint.pt").exists():
        return GMVAE.load(path)
    config = ModelConfig(n_features=data.n_features, image_shape=data.image_shape)
    torch.manual_seed(seed)
    model = GMVAE(config)
    train = TrainConfig(seed=seed, device="cpu")
    fit(model, data.x, train, recipe=Recipe([Pretrain(train.pretrain_epochs)]), progress=False)
    model.save(path)
    return model


def source_rows(spec: str | None):
    """The data to grow from: ``spec`` (a ``--data`` of ``gmvae train``), else mnist8k."""
    source = spec or resolve_mnist8k()
    if source is None:
        raise SystemExit("mnist8k.npz not found: pass --data or set PYRO_GMVAE_MNIST8K")
    return load_data(str(source))


def rows(
    data, n: int, rotation: float, shift: float, seed: int, keep_originals: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows: ``data`` and then moved copies of it, with their labels; without
    ``keep_originals``, moved copies only (``data`` itself moved first).

    A moved copy is resampled (bilinear), which softens its strokes: an autoencoder pretrained
    long enough tells the originals from the copies by that alone (scale.py, SCALE.md section 8),
    so a mix of both is two textures, not one data set at a larger size."""
    torch.manual_seed(seed)
    x = torch.as_tensor(data.x)
    parts, labels = ([x], [data.labels]) if keep_originals else ([], [])
    while sum(len(p) for p in parts) < n:
        parts.append(augment_images(x, data.image_shape, rotation, shift))
        labels.append(data.labels)
    return torch.cat(parts)[:n].numpy(), np.concatenate(labels)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/starts"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000, 32000, 64000])
    parser.add_argument("--starts", nargs="+", default=["tsne", "opentsne", "umap"])
    parser.add_argument("--rotation", type=float, default=15.0)
    parser.add_argument("--shift", type=float, default=0.1)
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="default: the shared mnist8k.npz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = source_rows(args.data)
    results_path = args.out / "starts.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["start"], r["n"]) for r in results}
    began = time.perf_counter()
    model = pretrained(args.out, data, args.seed)
    print(f"pretrained in {time.perf_counter() - began:.0f} s", flush=True)
    config = TrainConfig(seed=args.seed, tsne_input="codes")
    over_budget: set[str] = set()
    print("start     N       seconds  accuracy  NMI", flush=True)
    for n in args.sizes:
        x, labels = rows(data, n, args.rotation, args.shift, args.seed)
        codes = model.encode(x).astype(np.float64)
        for name in args.starts:
            if (name, n) in done or name in over_budget:
                continue
            began = time.perf_counter()
            start = find_start(name, codes, x, 10, config, uniform_weights=True)
            seconds = time.perf_counter() - began
            scores = clustering_scores(labels, start.assignments)
            record = {"start": name, "n": n, "seconds": seconds} | scores
            record["machine"] = machine_info() | {"omp": os.environ.get("OMP_NUM_THREADS")}
            results.append(record)
            atomic_write_text(results_path, json.dumps(results, indent=1) + "\n")
            print(
                f"{name:9} {n:<7} {seconds:7.1f}  {scores['accuracy']:.3f}     {scores['nmi']:.3f}",
                flush=True,
            )
            if seconds > args.budget:
                over_budget.add(name)


if __name__ == "__main__":
    main()
