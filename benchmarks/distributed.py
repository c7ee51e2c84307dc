"""Examples per second of SVI with 1 and 2 processes on the CPU, and the scaling efficiency.

``python benchmarks/distributed.py`` runs three measurements, one after the other, and prints a
table: one process with the single-process trainer (``gmvae train`` without ``--devices``), one
process on Lightning (``--accelerator cpu``: what moving single-process training onto Lightning
would cost), and two processes, ``torchrun --nproc-per-node 2`` running this script with
``--processes 2`` (Lightning's DDP over gloo). Every process uses one thread (``OMP_NUM_THREADS=1``), so 2 processes have twice the
cores of 1, and the efficiency is ``rate(2) / (2 * rate(1))``.

The data are mnist8k (8,000 28x28 digits; see ``_paths.py``), else scikit-learn's 1,797 8x8
digits. The model and training options are ``ModelConfig()`` and ``TrainConfig()``'s, augmented
views included, but the recipe is SVI alone (``pretrain_epochs=0``): no mixture start. Each
process steps on minibatches of ``--batch-size`` rows, so 2 processes take global batches of
twice that and half as many steps an epoch. The rate is the rows of epochs 2 and after over their
time (epoch 1 warms up); start-up (imports, process group) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from _paths import resolve_mnist8k

HERE = Path(__file__).resolve()


def load() -> tuple[object, str]:
    import numpy as np

    path = resolve_mnist8k()
    if path is not None:
        with np.load(path) as f:
            images = f["images"].astype(np.float32) / 255.0
        return images.reshape(len(images), -1), "mnist8k (8000 x 784)"
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0
    return x, f"digits ({x.shape[0]} x {x.shape[1]})"


def measure(processes: int, epochs: int, batch_size: int, lightning: bool) -> None:
    """One measurement; rank 0 prints ``RESULT {json}``."""
    import pyro
    import torch

    from pyro_gmvae import GMVAE, ModelConfig, TrainConfig, distributed_fit, fit
    from pyro_gmvae.distributed import close_process_group

    torch.set_num_threads(1)
    x, name = load()
    side = int(round(x.shape[1] ** 0.5))
    config = TrainConfig(
        epochs=epochs, pretrain_epochs=0, batch_size=batch_size, device="cpu", seed=0
    )
    pyro.set_rng_seed(0)
    model = GMVAE(ModelConfig(n_features=x.shape[1], image_shape=(side, side)))
    if processes == 1 and not lightning:
        history = fit(model, x, config, progress=False)
    else:
        strategy = "ddp" if processes > 1 else "auto"  # one process: no DDP at all
        history = distributed_fit(
            model,
            x,
            config,
            devices=processes,
            accelerator="cpu",
            strategy=strategy,
            progress=False,
        )
    collectives = {}
    if processes > 1:
        # What a step adds to one process's work: the all-reduce of every gradient, and of the
        # one number that says whether any process was asked to stop.
        collectives = {
            "allreduce_gradients_ms": _allreduce_ms(torch.zeros(model.n_parameters()), 10),
            "allreduce_stop_flag_ms": _allreduce_ms(torch.zeros(()), 100),
        }
        close_process_group()
    if int(os.environ.get("RANK", 0)) != 0:
        return
    timed = history[1:]
    seconds = sum(r["seconds"] for r in timed)
    result = {
        "processes": processes,
        "trainer": "Lightning" if lightning or processes > 1 else "pyro_gmvae.Trainer",
        "data": name,
        "batch_per_process": batch_size,
        "epochs_timed": len(timed),
        "examples_per_second": len(timed) * len(x) / seconds,
        "seconds_per_epoch": seconds / len(timed),
        "parameters": model.n_parameters(),
        **collectives,
    }
    print("RESULT " + json.dumps(result), flush=True)


def _allreduce_ms(tensor, repeats: int) -> float:
    """Milliseconds of one all-reduce (sum) of ``tensor`` over the process group."""
    import time

    import torch.distributed as dist

    dist.barrier()
    began = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    return 1000 * (time.perf_counter() - began) / repeats


def _command(processes: int, epochs: int, batch_size: int, lightning: bool) -> list[str]:
    script = [str(HERE), "--processes", str(processes), "--epochs", str(epochs)]
    script += ["--batch-size", str(batch_size)] + (["--lightning"] if lightning else [])
    if processes == 1:
        return [sys.executable, *script]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*torchrun, "--nproc-per-node", str(processes), *script]


def _result(command: list[str], returncode: int, stdout: str, stderr: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def run(processes: int, epochs: int, batch_size: int, lightning: bool = False) -> dict:
    """Measure in a fresh process (or two, under torchrun) and return rank 0's result."""
    command = _command(processes, epochs, batch_size, lightning)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    return _result(command, done.returncode, done.stdout, done.stderr)


def run_two_alone(epochs: int, batch_size: int) -> list[dict]:
    """Two independent single-process trainers at once: what the box gives two processes that
    never communicate, the ceiling for two DDP processes here."""
    command = _command(1, epochs, batch_size, lightning=False)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate() for p in procs]
    return [_result(command, p.returncode, *o) for p, o in zip(procs, outputs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=None, help="measure only this many")
    parser.add_argument("--epochs", type=int, default=3, help="SVI epochs (the first untimed)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per process and step")
    parser.add_argument(
        "--lightning",
        action="store_true",
        help="with --processes 1: on Lightning, not the single-process trainer",
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first is not timed")
    if args.processes is not None:
        measure(args.processes, args.epochs, args.batch_size, args.lightning)
        return
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    one = run(1, args.epochs, args.batch_size)
    one_lightning = run(1, args.epochs, args.batch_size, lightning=True)
    two = run(2, args.epochs, args.batch_size)
    alone = run_two_alone(args.epochs, args.batch_size)
    print(f"data: {one['data']}, {one['parameters']:,} parameters, batch {args.batch_size}/process")
    print("| processes | trainer | examples/s | s/epoch |")
    print("| --- | --- | --- | --- |")
    for r in (one, one_lightning, two):
        rate, epoch = r["examples_per_second"], r["seconds_per_epoch"]
        print(f"| {r['processes']} | {r['trainer']} | {rate:.0f} | {epoch:.2f} |")
    print(
        f"per step of 2 processes: all-reduce of the gradients "
        f"{two['allreduce_gradients_ms']:.1f} ms, of the stop flag "
        f"{two['allreduce_stop_flag_ms']:.2f} ms"
    )
    rates = [r["examples_per_second"] for r in alone]
    together = sum(rates)
    print(
        f"two independent single processes at once: {together:.0f} examples/s together "
        f"({' + '.join(f'{v:.0f}' for v in rates)}), "
        f"{together / one['examples_per_second']:.2f}x one alone"
    )
    speedup = two["examples_per_second"] / one["examples_per_second"]
    print(f"speed-up {speedup:.2f}x, scaling efficiency {speedup / 2:.0%}")
    ratio = one["examples_per_second"] / one_lightning["examples_per_second"]
    print(f"one process: pyro_gmvae.Trainer runs at {ratio:.2f}x Lightning's rate")


if __name__ == "__main__":
    main()
