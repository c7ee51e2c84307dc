"""One process of the two-process tests of tests/test_distributed.py, started by torchrun:
``python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py OUT``.

Each process fits the same tiny model on the same data (every process holds it all) with
:func:`pyro_gmvae.distributed.distributed_fit`, on the CPU with gloo, through a short recipe
(pretraining, the mixture start, an anchor epoch, an SVI epoch) into run directory ``OUT/run``,
then writes its parameters to ``OUT/rank{R}.pt``; then both resume that run for one more SVI
epoch and write ``OUT/rank{R}_resumed.pt``. An action at the start of the anchor phase (run
on rank 0 only, as every ``on_begin`` action is) keeps the weights after pretraining in
``OUT/pretrained.pt``: pretraining draws no random numbers, so they can be compared with a
single-process run over the same global batches.

The model has the enumerated guide, whose start fits q(y|x) on rank 0 between DDP's steps (a
backward there once stopped the next step); `gmvae train --devices 2` in
tests/test_distributed.py trains the marginal guide.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyro
import torch
from helpers import blobs, small_model, small_train

from pyro_gmvae import GMVAE, DistributedConfig, RunConfig
from pyro_gmvae.distributed import close_process_group, distributed_fit, run_lightning
from pyro_gmvae.train import SVI, Anchor, MixtureStart, Pretrain, Recipe, Trainer, read_metrics

N, BATCH, PRETRAIN_EPOCHS = 128, 16, 2


def model_config(n_features: int):
    return small_model(n_features=n_features, guide="enumerated")


def config():
    return small_train(batch_size=BATCH, init="gmm", restarts=1, checkpoint_every=1)


def recipe(out: Path) -> list:
    def keep_pretrained(trainer) -> None:
        torch.save(trainer.model.state_dict(), out / "pretrained.pt")

    return [
        Pretrain(PRETRAIN_EPOCHS),
        Anchor(1, beta=3.0, on_begin=[keep_pretrained, MixtureStart()], new_optimizer=True),
        SVI(1),
    ]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    x, labels = blobs(n=N)
    pyro.set_rng_seed(0)
    model = GMVAE(model_config(x.shape[1]))
    run_config = RunConfig(model=model.config, train=config())  # GMVAE.load rebuilds from it
    distributed_fit(
        model,
        x,
        config(),
        devices=2,
        accelerator="cpu",
        strategy="ddp",
        recipe=recipe(out),
        labels=labels,
        run_dir=out / "run",
        run_config=run_config,
        progress=False,
    )
    rank = os.environ["RANK"]
    torch.save(model.state_dict(), out / f"rank{rank}.pt")

    # A multi-process run resumed on as many processes: each reads rank 0's checkpoint, once
    # rank 0 has written it.
    torch.distributed.barrier()
    model = GMVAE(model_config(x.shape[1]))
    longer = Recipe(recipe(out)).replace("svi", SVI(2))
    trainer = Trainer(
        model,
        x,
        config(),
        recipe=longer,
        labels=labels,
        run_dir=out / "run",
        run_config=run_config,
        progress=False,
    )
    trainer.resume(read_metrics(out / "run"))
    run_lightning(trainer, DistributedConfig(devices=2, accelerator="cpu", strategy="ddp"))
    torch.save(model.state_dict(), out / f"rank{rank}_resumed.pt")
    close_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
