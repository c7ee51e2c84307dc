"""Data-parallel training on PyTorch Lightning, as Pyro's ``examples/svi_lightning.py`` does.

The recipe is the single-process one: a :class:`~pyro_gmvae.train.Trainer` on every process
holds the data, the recipe, the optimizer and the position, and :class:`GMVAELightning` drives
it one epoch at a time inside one ``lightning.Trainer.fit``, as ``Trainer.run`` does:

- **Batches.** Each process draws its own minibatches of row indices from a
  :class:`GlobalEpochSampler` (a ``DistributedSampler`` reseeded each epoch with the run's global
  epoch, so a resumed run draws what an uninterrupted one would). Its :class:`~pyro_gmvae.train.
  Batch` carries ``size=N``: the ``data`` plate is sized to the full data with the minibatch as its
  subsample, so each process's loss is an unbiased estimate of the per-example ELBO.
- **Gradients.** The GMVAE's networks and prior are ``nn.Parameter``\\ s of an ``nn.Module`` that
  the LightningModule holds, so DDP sees every one of them and averages their gradients, after
  which each process clips and takes the same Adam step (no parameter lives in Pyro's global param
  store). With equal minibatches on every process the averaged gradient is that of the
  single-process loss over the union of the minibatches.
- **Phase starts.** ``on_begin`` actions (the mixture start) run once, on rank 0, which then
  broadcasts the model's state, each row's cluster and the start's notes to every process: the
  start is a t-SNE or a mixture fit, minutes on one process that the others need not repeat,
  and a broadcast makes every process's start the same whatever the action's randomness. An
  action of your own that fits parameters must take their gradients with
  ``torch.autograd.grad``, as the start's fit of q(y|x) does (``Trainer._fit_cluster_encoder``):
  a ``backward`` on rank 0 alone reaches DDP's hooks on those parameters, and the next step
  stops with "Encountered gradient which is undefined, but still allreduced by DDP reducer".
- **Files.** Rank 0 alone writes ``metrics.jsonl`` and ``checkpoint.pt``, atomically, in the
  format of the single-process trainer, at the end of every ``checkpoint_every``-th epoch, of
  an epoch that ends ``checkpoint_minutes`` or more after the last save (never mid-epoch), and of
  the last: ``GMVAE.load``, ``gmvae evaluate`` and ``Trainer.resume`` read it in one process, and a
  multi-process run resumes from a single-process checkpoint as well.
- **Stopping.** Ctrl-C, SIGTERM or SIGHUP on any process asks for a stop; the processes agree
  after every step, all stop after the same one, and rank 0 saves the weights reached at the
  start of that epoch, which a resumed run begins again.

Lightning is an optional extra (``pip install 'pyro_gmvae[distributed]'``); without it this module
imports, and :func:`check_lightning` says what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .config import DistributedConfig, TrainConfig
from .errors import ConfigError
from .metrics import clustering_scores
from .model import GMVAE
from .rng import seed_everything
from .train import (
    Phase,
    Pretrain,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingProcessLost,
)

try:
    import lightning.pytorch as pl
except ImportError:  # the optional extra: check_lightning says how to install it
    pl = None

INSTALL = "pip install 'pyro_gmvae[distributed]'"
#: What stops training after the current step, with a checkpoint.
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + (
    [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
)


def check_lightning() -> None:
    """Raise :class:`ConfigError`, in one line, where PyTorch Lightning cannot be imported."""
    try:
        import lightning.pytorch  # noqa: F401 (the import is the check)
    except ImportError:
        raise ConfigError(
            "--devices, --accelerator, --strategy and --num-nodes train on PyTorch Lightning, "
            f"which is not installed: {INSTALL}"
        ) from None


def launch_rank(devices: int) -> int:
    """This process's global rank as its launcher set it, before any process group exists, with
    ``devices`` processes per node: ``RANK`` (torchrun), ``SLURM_PROCID``, or Lightning's
    ``NODE_RANK`` and ``LOCAL_RANK`` (set for the processes Lightning starts itself; the first,
    which starts them, has no ``LOCAL_RANK``). Only rank 0 writes into the run directory."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))


class GlobalEpochSampler(DistributedSampler):
    """A ``DistributedSampler`` whose ``set_epoch`` (called by Lightning with the epochs of this
    ``fit``, from 0) counts from ``first_epoch``, the run's position when the fit began: the
    shuffle of global epoch ``e`` is the same whether or not the run was resumed."""

    def __init__(self, dataset: Any, first_epoch: int, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.first_epoch = first_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.first_epoch + epoch)


_LightningModule = torch.nn.Module if pl is None else pl.LightningModule


class GMVAELightning(_LightningModule):
    """The LightningModule of a :class:`~pyro_gmvae.train.Trainer`: one Lightning epoch is one
    epoch of its recipe, each minibatch one step of the current phase's loss.

    Optimisation is manual: the phase says when a fresh Adam begins and its learning rate each
    epoch, which Lightning's ``configure_optimizers`` (one optimizer, made once) cannot say.

    Args:
        runner: the trainer whose model, data, recipe and position this drives (changed in place).
    """

    def __init__(self, runner: Trainer):
        if pl is None:
            check_lightning()
        super().__init__()
        self.runner = runner
        self.gmvae = runner.model  # a submodule: DDP synchronises every one of its parameters
        self.automatic_optimization = False
        self.fresh = (runner.epoch, runner.begun) == (0, 0)
        # Stopping on request (see on_fit_start): asked here, agreed by every process.
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.interrupted_after: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._loss_sum = torch.zeros(())
        self._examples = 0
        self._began = 0.0

    # ---------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Move the runner to this process's device (known only now, after the launch)."""
        runner = self.runner
        device = self.trainer.strategy.root_device
        runner.device = device
        runner.model.to(device)
        if isinstance(runner.x, torch.Tensor):  # ScaledRows stay on the host, read per batch
            runner.x = runner.x.to(device)
        if runner.assignments is not None:
            runner.assignments = runner.assignments.to(device)

    def on_fit_start(self) -> None:
        """Seed each process: a new run with ``seed`` plus the rank (rank 0 draws what the
        single-process trainer would), so that the processes' z samples and moved views
        differ; a resumed one continues the checkpoint's random state on rank 0 and seeds the
        others from the seed, the rank and the epoch (their states were not saved)."""
        rank, runner = self.trainer.global_rank, self.runner
        if self.fresh:
            seed_everything((runner.config.seed + rank) % 2**32)
        elif rank != 0:
            seed_everything((runner.config.seed + rank + 7919 * runner.epoch) % 2**32)
        # Ctrl-C, SIGTERM and SIGHUP ask for a stop after the current step, as in one process;
        # Lightning's own handlers (which kill the other processes) return at teardown.
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous_handlers[s] = signal.signal(s, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second request: stop at once
            raise KeyboardInterrupt
        self.stop_requested, self.stop_signal = True, signum

    def teardown(self, stage: str) -> None:
        """Give the signals back to the handlers they had before :meth:`on_fit_start`."""
        for s, handler in self._previous_handlers.items():
            signal.signal(s, handler)
        self._previous_handlers = {}

    def configure_optimizers(self) -> None:
        """None: the runner makes each phase's optimizer (see the class)."""
        return None

    def train_dataloader(self) -> DataLoader:
        """Row indices of this process's share of each epoch, ``batch_size`` at a time."""
        runner = self.runner
        sampler = GlobalEpochSampler(
            TensorDataset(torch.arange(len(runner.x))),
            runner.epoch,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=runner.config.seed,
        )
        return DataLoader(sampler.dataset, batch_size=runner.config.batch_size, sampler=sampler)

    @property
    def phase(self) -> Phase:
        """The phase of the runner's current epoch."""
        return self.runner.phase_at(self.runner.epoch)

    # -------------------------------------------------------------------------- an epoch
    def on_train_epoch_start(self) -> None:
        """Begin the epoch's phase if it is new, and set its learning rate, as ``Trainer`` does."""
        runner = self.runner
        index, _ = runner.locate(runner.epoch)
        if runner.begun <= index:
            self._begin(index)
        for group in runner.optimizer.param_groups:
            group["lr"] = runner.learning_rate(runner.epoch)
        self._loss_sum = torch.zeros((), device=runner.device)
        self._examples = 0
        self._began = time.perf_counter()
        runner.model.train()

    def _begin(self, index: int) -> None:
        """Begin phase ``index``: its ``on_begin`` actions on rank 0, broadcast (see the module)."""
        runner = self.runner
        phase = runner.recipe[index]
        if phase.on_begin:
            strategy = self.trainer.strategy
            if self.trainer.global_rank == 0:
                for action in phase.on_begin:
                    action(runner)
            assignments = runner.assignments
            state = strategy.broadcast(
                (
                    {k: v.cpu() for k, v in runner.model.state_dict().items()},
                    None if assignments is None else assignments.cpu(),
                    runner.start_info,
                ),
                src=0,
            )
            weights, assignments, runner.start_info = state
            runner.model.load_state_dict(weights)
            runner.assignments = None if assignments is None else assignments.to(runner.device)
            runner.model.train()
        if phase.new_optimizer or runner.optimizer is None:
            runner.optimizer = runner.make_optimizer()
        runner.begun = index + 1

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One step of the phase's loss on this process's minibatch; DDP averages the
        gradients in ``manual_backward``, then every process clips and steps alike."""
        runner = self.runner
        (idx,) = batch
        minibatch = dataclasses.replace(runner.minibatch(idx), size=len(runner.x))
        loss = self.phase.loss(runner, minibatch)
        runner.optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if runner.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(runner.model.parameters(), runner.config.clip_norm)
        runner.optimizer.step()
        self._loss_sum += loss.detach() * len(idx)
        self._examples += len(idx)
        # Each process may have been asked to stop (a terminal's Ctrl-C reaches all of them, a
        # kill only one): they agree after every step, so all stop after the same one.
        asked = torch.tensor(float(self.stop_requested), device=runner.device)
        if float(self.trainer.strategy.reduce(asked, reduce_op="sum")) > 0:
            self.interrupted_after = batch_idx + 1
            self.trainer.should_stop = True
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        """The epoch's record (the loss over every process's rows), rank 0's files."""
        runner = self.runner
        strategy = self.trainer.strategy
        if self.interrupted_after is not None:
            # The epoch is unfinished: the checkpoint holds the weights reached, at the start
            # of this epoch, which a resumed run (on any number of processes) begins again.
            runner.perm, runner.batch, runner.epoch_loss = None, 0, 0.0
            if self.trainer.global_rank == 0:
                runner.save()
            strategy.barrier()  # no process ends (and so none is reported dead) before this
            return
        totals = torch.stack(
            [self._loss_sum.double(), torch.tensor(float(self._examples), device=runner.device)]
        )
        totals = strategy.reduce(totals.to(runner.device), reduce_op="sum")
        loss = float(totals[0] / totals[1])
        phase = self.phase
        if not math.isfinite(loss) or not all(
            bool(torch.isfinite(p).all()) for p in runner.model.parameters()
        ):
            # Every process reduced the same loss and holds the same weights: all stop here.
            raise TrainingDiverged(
                f"the {phase.name} loss became {loss} in epoch {runner.epoch + 1}; the last "
                f"good checkpoint in {runner.run_dir} is kept. Lower --lr, keep --clip-norm "
                "on, or check the data for extreme values"
            )
        record: dict[str, Any] = {
            "epoch": runner.epoch + 1,
            "phase": phase.name,
            "loss": loss,
            "seconds": time.perf_counter() - self._began,
            "processes": self.trainer.world_size,
        }
        record |= runner.start_record()
        leader = self.trainer.global_rank == 0
        scored = runner.labelled is not None and runner.labelled.any()
        if leader and not isinstance(phase, Pretrain) and scored:
            record |= clustering_scores(runner.labels, runner.model.predict(runner.x))
        runner.epoch += 1
        runner.perm, runner.batch, runner.epoch_loss = None, 0, 0.0
        runner.history.append(record)
        # Rank 0 alone decides and writes (no collective), so its clock may differ from others'.
        if leader and runner._checkpoint_after_epoch():
            runner.save()
        if leader and runner.on_epoch is not None:
            runner.on_epoch(record)


def _strategy(config: DistributedConfig) -> str:
    """Lightning's strategy for ``config.strategy``; DDP always finds unused parameters, since
    pretraining leaves the prior unused and an enumerated guide's cluster encoder too."""
    name = config.strategy
    if name == "auto" and config.world_size > 1:
        from lightning.fabric.utilities.imports import _IS_INTERACTIVE

        name = "ddp_notebook" if _IS_INTERACTIVE else "ddp"
    if name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        return f"{name}_find_unused_parameters_true"
    return name


def run_lightning(runner: Trainer, config: DistributedConfig) -> list[dict[str, Any]]:
    """Run ``runner``'s recipe from its position to the end on ``config``'s processes; returns
    the per-epoch records (rank 0's carry the clustering scores).

    Seeding: see :meth:`GMVAELightning.on_fit_start`. A checkpoint written mid-epoch (by Ctrl-C
    in one process) continues from the beginning of that epoch.

    Raises:
        ConfigError: Lightning is not installed, or ``config`` is not valid.
        TrainingInterrupted: on every process, after Ctrl-C, SIGTERM or SIGHUP reached any of
            them: all stop after the same step, rank 0 having saved the weights reached, to be
            resumed from the start of that epoch.
        TrainingDiverged: the loss or the weights stopped being finite (on every process).
        TrainingProcessLost: another process died or became unreachable.
    """
    check_lightning()
    config.validate()
    if runner.batch != 0:
        warnings.warn(
            f"the checkpoint is in epoch {runner.epoch + 1}, after batch {runner.batch}; "
            "multi-process training repeats that epoch from its beginning",
            stacklevel=2,
        )
        runner.perm, runner.batch, runner.epoch_loss = None, 0, 0.0
    remaining = runner.total_epochs - runner.epoch
    if remaining <= 0:
        return runner.history
    module = GMVAELightning(runner)
    trainer = pl.Trainer(
        accelerator="gpu" if config.accelerator == "cuda" else config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=_strategy(config),
        max_epochs=remaining,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=runner.progress,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        # Rows are indices into data every process holds in memory: no worker would help.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # By design (see GMVAELightning): the runner makes each phase's optimizer.
        warnings.filterwarnings("ignore", message=".*configure_optimizers.* returned `None`.*")
        try:
            trainer.fit(module)
        except RuntimeError as e:
            if not _lost_a_process(e):
                raise
            kept = f" (in {runner.run_dir})" if runner.run_dir else ""
            raise TrainingProcessLost(
                f"another training process died or became unreachable "
                f"({str(e).splitlines()[0][:160]}); every process stopped, and the last "
                f"checkpoint{kept} is intact: resume with --resume"
            ) from None
    if module.interrupted_after is not None:
        where = f"in epoch {runner.epoch + 1}, after batch {module.interrupted_after}"
        by = module.stop_signal
        name = f" ({signal.Signals(by).name})" if by not in (None, signal.SIGINT) else ""
        how = (
            f"; resume with --resume (checkpoint in {runner.run_dir}), which begins that "
            "epoch again"
            if runner.run_dir
            else ""
        )
        raise TrainingInterrupted(f"training interrupted {where}{name}{how}", by)
    return runner.history


def _lost_a_process(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective failing because a peer is gone (gloo reports a reset
    connection, NCCL a failed or timed-out operation)."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error)
    return any(
        w in text for w in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out")
    )


def close_process_group() -> None:
    """Wait for every process, then close the process group, if one is open. A process that
    ends while another still holds its gloo connections can abort in their teardown (SIGABRT),
    which a launcher reports as a dead rank; a failed wait (a process already gone) is ignored,
    since this runs on the way out, after success or an error."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            dist.barrier()
            dist.destroy_process_group()


def distributed_fit(
    model: GMVAE,
    x: np.ndarray | torch.Tensor,
    config: TrainConfig | None = None,
    *,
    devices: int = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`~pyro_gmvae.train.fit` on ``devices`` processes (per node, on ``num_nodes``
    nodes) with Lightning; returns the per-epoch records. ``kwargs`` go to
    :class:`~pyro_gmvae.train.Trainer` (``recipe``, ``labels``, ``run_dir``...).

    Every process runs this call: with ``strategy="ddp"`` (the default for more than one
    device outside a notebook) Lightning starts the other processes by running the same
    script again, as torchrun does. Build ``model`` after ``pyro.set_rng_seed(seed)`` in every
    one, as for ``fit``.
    """
    distributed = DistributedConfig(devices, accelerator, strategy, num_nodes)
    distributed.validate()
    check_lightning()
    runner = Trainer(model, x, config or TrainConfig(), **kwargs)
    return run_lightning(runner, distributed)


__all__ = [
    "GMVAELightning",
    "GlobalEpochSampler",
    "check_lightning",
    "close_process_group",
    "distributed_fit",
    "launch_rank",
    "run_lightning",
]
