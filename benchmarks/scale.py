"""How the default ``gmvae train`` grows with the number of rows: 8,000 to 64,000 MNIST-like rows.

For each N the rows are randomly shifted and rotated copies of mnist8k (the training
augmentation's own function, rotations up to 15 degrees, shifts up to a tenth of the width; made
on the fly into a temporary ``.npy`` of uint8 grey levels, which training streams from disk, and
deleted afterwards, never committed), each copy with its original's label. Every row is a moved
copy, the first 8,000 too: a moved copy is resampled, which softens its strokes, and a network
pretrained for the default 300 epochs tells unmoved originals from copies by that alone (SCALE.md
section 8), so a mix of both is two textures rather than one data set at a larger size.
``--keep-originals`` makes the rows of sections 2-7 of SCALE.md instead: mnist8k itself, then
the copies. Each size runs the default command with figures, as a user would, in a process of
its own:

    python -m pyro_gmvae train --data ROWS.npy --clusters 10 --out RUN [EXTRA FLAGS]

and the benchmark reads back the wall time of each phase (the records' ``seconds`` by ``phase``,
the start's ``start_seconds``; "rest" is loading, scoring and the figures), the process's peak
resident memory (its ``VmHWM``, polled: ``_memory.py`` says why not ``wait4``; and the peak of it
and its worker processes together), and then, in this process, the accuracy and NMI of the trained
model's clusters and of its mixture start (the checkpoint's ``assignments``) against the rows'
labels (an ``.npy`` holds no labels, so ``gmvae train`` cannot score them itself), on all N rows
and, with ``--keep-originals``, on the 8,000 original rows alone.

With ``--pool P`` each size's rows are instead N drawn at random from the first P, one data set
sampled at several sizes: accuracy then compares the sizes directly and says what more rows of
one distribution buy, where the default layout gives a larger N more copies of each digit.

From the sizes it fits a growth exponent per phase (time ~ N^b, least squares on the logs) and
predicts the time at ``--predict`` rows on this CPU from the largest measured size and those
exponents. Writes ``OUT/scale.json`` after each size (kept: an interrupted benchmark resumes)
and prints a Markdown table for ``benchmarks/SCALE.md``.

    OMP_NUM_THREADS=2 python benchmarks/scale.py --out benchmarks/results/scale -- --init umap
    OMP_NUM_THREADS=2 python benchmarks/scale.py --sizes 8000 64000 --pool 64000 --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _memory import PeakMemory  # beside this script
from clustering import machine_info, start_kept  # beside this script
from starts import rows, source_rows  # beside this script

from pyro_gmvae import GMVAE, clustering_scores, load_data
from pyro_gmvae.checkpoints import load_checkpoint
from pyro_gmvae.files import atomic_write_text
from pyro_gmvae.train import read_metrics

PHASES = ("pretrain", "start", "anchor", "svi", "rest")


def run_size(
    n: int,
    data,
    work: Path,
    extra: list[str],
    seed: int,
    pool: int = 0,
    keep_originals: bool = False,
) -> dict:
    """Train on ``n`` rows in a child process; its phase times, peak memory and scores. With a
    ``pool``, the rows are ``n`` drawn at random (with ``seed``) from the first ``pool`` rows,
    so that every size is one distribution (and, with ``keep_originals``, holds originals and
    moved copies in the same proportion)."""
    x, labels = rows(data, max(n, pool), 15.0, 0.1, seed, keep_originals)
    # mnist8k itself, the first rows, when kept
    original = np.arange(len(x)) < (len(data) if keep_originals else 0)
    if pool:
        drawn = np.sort(np.random.default_rng([seed, n, pool]).choice(pool, n, replace=False))
        x, labels, original = x[drawn], labels[drawn], original[drawn]
    path = work / f"rows{n}.npy"
    np.save(path, np.round(x * 255).astype(np.uint8))
    del x
    out = work / f"run{n}"
    command = [sys.executable, "-m", "pyro_gmvae", "train", "--data", str(path)]
    command += ["--clusters", "10", "--out", str(out), "--no-progress", "--seed", str(seed)]
    began = time.perf_counter()
    child = subprocess.Popen(command + extra, stdout=subprocess.PIPE, text=True)
    memory = PeakMemory(child.pid)
    stdout = child.stdout.read()
    status = child.wait()
    wall = time.perf_counter() - began
    memory.stop()
    if status != 0:
        raise SystemExit(f"gmvae train failed on {n} rows (status {status})")
    json.loads(stdout)  # what gmvae train printed is its result
    clusters = GMVAE.load(out).predict(load_data(str(path)).x)
    final = clustering_scores(labels, clusters)
    start = load_checkpoint(out / "checkpoint.pt")["assignments"].numpy()
    if original.any():
        originals = {
            "accuracy_originals": clustering_scores(labels[original], clusters[original])[
                "accuracy"
            ],
            "start_accuracy_originals": clustering_scores(labels[original], start[original])[
                "accuracy"
            ],
        }
    else:
        originals = {}
    start = clustering_scores(labels, start)
    path.unlink()
    seconds: dict[str, float] = defaultdict(float)
    epochs: dict[str, int] = defaultdict(int)
    for record in read_metrics(out):
        seconds[record["phase"]] += record["seconds"]
        epochs[record["phase"]] += 1
        seconds["start"] += record.get("start_seconds", 0.0)
    seconds["rest"] = wall - sum(seconds.values())
    return {
        "n": n,
        "pool": pool,
        "originals": int(original.sum()),
        "keep_originals": keep_originals,
        "wall_seconds": wall,
        "seconds": dict(seconds),
        "epochs": dict(epochs),
        # The training process's own peak (VmHWM), and that of it and its workers together
        # (sampled); before 2026-12-06 wait4's ru_maxrss, which holds this script's own peak.
        "peak_rss_gib": memory.peak_kib / 2**20,
        "peak_tree_rss_gib": memory.tree_peak_kib / 2**20,
        "memory_measure": "VmHWM",
        "accuracy": final["accuracy"],
        "nmi": final["nmi"],
        "start_accuracy": start["accuracy"],
        "start_nmi": start["nmi"],
        **originals,
        **start_kept(out),
        "extra_flags": extra,
    }


def same(result: dict, n: int, args: argparse.Namespace) -> bool:
    """Whether ``result`` measured ``n`` rows as ``args`` asks (its flags, its pool, its rows);
    results from before ``--keep-originals`` existed kept them."""
    asked = (n, args.extra, args.pool, args.keep_originals)
    return (
        result["n"],
        result["extra_flags"],
        result.get("pool", 0),
        result.get("keep_originals", True),
    ) == asked


def exponents(results: list[dict]) -> dict[str, float]:
    """Per phase, b of time ~ N^b fitted on the logs (needs two sizes)."""
    n = np.log([r["n"] for r in results])
    fitted = {}
    for phase in PHASES + ("wall",):
        t = [
            r["wall_seconds"] if phase == "wall" else r["seconds"].get(phase, 0.0) for r in results
        ]
        if len(results) > 1 and min(t) > 0:
            fitted[phase] = float(np.polyfit(n, np.log(t), 1)[0])
    return fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000, 32000, 64000])
    parser.add_argument("--predict", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="default: the shared mnist8k.npz")
    parser.add_argument(
        "--pool",
        type=int,
        default=0,
        help="draw each size's rows at random from this many (mnist8k and its moved copies), so "
        "every size is the same mix (0: mnist8k first, then the copies)",
    )
    parser.add_argument(
        "--keep-originals",
        action="store_true",
        help="the rows of SCALE.md sections 2-7: mnist8k itself, then moved copies (default: "
        "moved copies only, one texture)",
    )
    parser.add_argument("extra", nargs="*", help="more gmvae train flags, after --")
    args = parser.parse_args()
    if args.pool and args.pool < max(args.sizes):
        parser.error(f"--pool {args.pool} is smaller than the largest size, {max(args.sizes)}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = source_rows(args.data)
    path = args.out / "scale.json"
    saved = json.loads(path.read_text()) if path.exists() else {"results": []}
    results = saved["results"]
    with tempfile.TemporaryDirectory() as work:
        for n in args.sizes:
            if any(same(r, n, args) for r in results):
                continue
            results.append(
                run_size(n, data, Path(work), args.extra, args.seed, args.pool, args.keep_originals)
            )
            saved = {"machine": machine_info() | {"omp": os.environ.get("OMP_NUM_THREADS")}}
            saved["results"] = sorted(results, key=lambda r: r["n"])
            atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
            print(json.dumps(results[-1]), flush=True)
    results = [r for r in saved["results"] if same(r, r["n"], args)]
    fitted = exponents(results)
    originals = any("accuracy_originals" in r for r in results)  # only with --keep-originals
    print(
        "\n| rows | "
        + " | ".join(PHASES)
        + " | wall | start share | peak memory | start accuracy | accuracy | NMI |"
        + (" the originals among them: start, end |" if originals else "")
    )
    print("|---" * (len(PHASES) + 7 + originals) + "|")
    for r in results:
        times = " | ".join(f"{r['seconds'].get(p, 0.0):.0f} s" for p in PHASES)
        share = r["seconds"].get("start", 0.0) / r["wall_seconds"]
        kept = (
            f" {r.get('start_accuracy_originals', float('nan')):.3f}, "
            f"{r.get('accuracy_originals', float('nan')):.3f} |"
        )
        print(
            f"| {r['n']:,} | {times} | {r['wall_seconds'] / 60:.1f} min | {share:.0%} | "
            f"{r['peak_rss_gib']:.2f} GiB | {r['start_accuracy']:.3f} | {r['accuracy']:.3f} | "
            f"{r['nmi']:.3f} |" + (kept if originals else "")
        )
    print(
        "\ngrowth exponent b (time ~ N^b): " + ", ".join(f"{p} {b:.2f}" for p, b in fitted.items())
    )
    if results and fitted:
        last = results[-1]
        ratio = args.predict / last["n"]
        predicted = {p: last["seconds"].get(p, 0.0) * ratio ** fitted.get(p, 1.0) for p in PHASES}
        print(
            f"predicted at {args.predict:,} rows: {sum(predicted.values()) / 3600:.2f} h ("
            + ", ".join(f"{p} {t / 60:.0f} min" for p, t in predicted.items())
            + ")"
        )


if __name__ == "__main__":
    main()
