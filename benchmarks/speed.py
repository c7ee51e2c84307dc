"""Speed of pyro_gmvae: Pyro's exact enumeration against the same ELBO written by hand in PyTorch.

Three measurements, printed as tables (``python benchmarks/speed.py --help`` for the flags):

1. **One optimizer step** at K clusters and a few batch sizes, for both guides: the trainer's own
   step (the SVI phase's ``loss(trainer, batch)`` with ``TraceEnum_ELBO``, then ``Trainer.step``)
   against one step of :func:`pyro_gmvae.reference.hand_loss`, the same negative ELBO written in
   plain PyTorch as an explicit, vectorised sum over the K clusters, on the same GMVAE instance,
   batch and device. Variants of the Pyro step measure candidate fixes for its overhead
   (validation off, ``pyro.module`` once, no NaN check, JIT, fused Adam). All variants run
   interleaved in one process, so their ratios share the same machine conditions. Before timing,
   the Pyro and hand-written losses (and gradients) are checked to agree on the same draws of z.
2. **Whole training epochs** (``Trainer.run`` of a recipe of one SVI epoch, with the trainer's own
   minibatch augmentation) on MNIST for a grid of K and batch sizes: examples per second and peak
   memory, each configuration in a fresh subprocess so its peak memory is its own. A variant with
   a loss of its own (hand-written, or a fix) runs it as that one phase (:class:`HandSVI`,
   :class:`DirectSVI`).
3. On CUDA, an epoch of 60,000 28x28 examples at K = 10 (mnist8k repeated to 60,000 rows).

Targets (from the issue) are printed as PASS/FAIL, never asserted. ``--profile N`` instead
profiles N Pyro steps with cProfile and prints where the time goes; ``--layouts`` instead times
pretraining and SVI steps with the convolutions' weights in the library's layout against the
default (contiguous) layout, interleaved in one process, and ``--precisions`` the same steps with
the networks in bfloat16 (``--precision bfloat16``) against float32.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import math
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyro
import torch
from _memory import status_kib  # benchmarks/_memory.py, beside this script
from pyro.infer import ELBO, JitTraceEnum_ELBO, TraceEnum_ELBO
from pyro.infer.traceenum_elbo import _compute_dice_elbo

from pyro_gmvae.config import ModelConfig, TrainConfig
from pyro_gmvae.data import load_data
from pyro_gmvae.model import GMVAE
from pyro_gmvae.networks import CONV_LAYOUT
from pyro_gmvae.reference import draw_like_jit, hand_loss
from pyro_gmvae.train import SVI, Batch, Phase, Pretrain, Recipe, Trainer

from _paths import resolve_mnist8k  # benchmarks/_paths.py, beside this script

GPU_EPOCH_ROWS = 60_000
TARGETS = {
    "ratio_256": 1.15,  # step time pyro / hand at batch 256, K = 10, CPU
    "ratio_64": 1.3,  # ... at batch 64
    "k_exponent": 1.1,  # epoch time ~ K^e; 1 is linear, 0.1 of slack for timing noise
    "gpu_epoch_s": 2.0,  # 60,000 examples at K = 10 on a GPU
}
# Presets of --grid: epoch-grid clusters, batch sizes, rows; "tiny" also shrinks the model.
GRIDS: dict[str, dict[str, Any]] = {
    "full": {"clusters": [10, 30, 100], "batch_sizes": [64, 256, 1024], "rows": 8000},
    "cpu": {
        "clusters": [10, 30, 100],
        "batch_sizes": [64, 256, 1024],
        "rows": 1024,
        "epoch_warmup": 1,
        "epoch_step_repeats": 1,
    },
    "tiny": {
        "clusters": [2, 3],
        "batch_sizes": [16],
        "rows": 48,
        "step_batches": [8, 16],
        "step_clusters": 3,
        "hidden": [16],
        "latent_dim": 2,
    },
}


# ----------------------------------------------------------------------------------------------
# Variants of the step


class TraceEnumNoNanCheck(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` without the ``warn_if_nan`` of ``differentiable_loss``, which reads the
    loss on the host (and hooks its gradient to read that too): a device synchronisation per
    step on CUDA. The trainer already checks the loss for NaN at intervals."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + _compute_dice_elbo(model_trace, guide_trace)
        return -elbo / self.num_particles


@contextlib.contextmanager
def pyro_module_noop() -> Iterator[None]:
    """Make ``pyro.module`` return the module untouched: what registering it once would cost.

    The trainer optimises ``model.parameters()`` with torch's Adam, so the registration that
    ``model``/``guide`` repeat on every call (a traced ``param`` site per tensor) changes nothing.
    """
    with mock.patch.object(pyro, "module", lambda name, nn_module, *args, **kwargs: nn_module):
        yield


@dataclass
class HandSVI(SVI):
    """The SVI phase with the hand-written loss (:func:`~pyro_gmvae.reference.hand_loss`, KL
    terms times ``beta``) in the place of Pyro's: what a step or an epoch costs without Pyro."""

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        return hand_loss(trainer.model, batch.x, batch.view, beta=self.beta)


@dataclass
class DirectSVI(SVI):
    """The SVI phase calling ``elbo.differentiable_loss(model, guide, *batch.args) / N`` without
    the ``kl_scale`` keyword at beta 1 (the model's default then).

    Kept from when the trainer's loss passed ``view=None`` to the ELBO, which a JIT trace cannot
    take, so that the jit:direct rows compare with the earlier tables; the SVI phase now passes
    ``batch.args`` too, and computes the same loss.
    """

    def loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        kwargs = {} if self.beta == 1.0 else {"kl_scale": self.beta}
        loss = self.elbo.differentiable_loss(
            trainer.model_fn, trainer.guide_fn, *batch.args, **kwargs
        )
        return loss / len(batch.x)


@dataclass(frozen=True)
class Variant:
    """One way of computing the loss of a step: the SVI phase it runs as (``phase``, with the
    ELBO ``elbo()``) and the context around it. All share ``Trainer.step``."""

    name: str
    note: str
    elbo: Callable[[], ELBO] | None = None  # None: the phase's default (unused by HandSVI)
    phase: type[SVI] = SVI
    validation: bool = True
    module_each_call: bool = True
    # Adam(fused=True): one kernel over all parameters instead of a Python loop over tensors.
    # (Trainer.make_optimizer is fused too where torch has the kernel: 2.4 on.)
    fused_adam: bool = False

    def context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if not self.validation:
            stack.enter_context(pyro.validation_enabled(False))
        if not self.module_each_call:
            stack.enter_context(pyro_module_noop())
        return stack


def _trace_enum() -> ELBO:
    return TraceEnum_ELBO(max_plate_nesting=1)


def _jit_trace_enum() -> ELBO:
    return JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)


VARIANTS = {
    v.name: v
    for v in [
        Variant(
            "hand", "plain PyTorch, explicit vectorised sum over the K clusters", phase=HandSVI
        ),
        Variant(
            "pyro", "the SVI phase's loss + Trainer.step, as the trainer runs them", _trace_enum
        ),
        Variant(
            "pyro:no-validation",
            "inside pyro.validation_enabled(False)",
            _trace_enum,
            validation=False,
        ),
        Variant(
            "pyro:module-once",
            "pyro.module a no-op (parameters registered once)",
            _trace_enum,
            module_each_call=False,
        ),
        Variant(
            "pyro:no-nan-check",
            "differentiable_loss without warn_if_nan (TraceEnumNoNanCheck)",
            lambda: TraceEnumNoNanCheck(max_plate_nesting=1),
        ),
        Variant(
            "pyro:no-strict-warning",
            "TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)",
            lambda: TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
        ),
        Variant(
            "pyro:all",
            "no validation + module once + no NaN check",
            lambda: TraceEnumNoNanCheck(max_plate_nesting=1),
            validation=False,
            module_each_call=False,
        ),
        Variant("jit", "SVI(elbo=JitTraceEnum_ELBO(max_plate_nesting=1))", _jit_trace_enum),
        Variant(
            "hand:fused-adam",
            "hand-written loss, torch.optim.Adam(..., fused=True)",
            phase=HandSVI,
            fused_adam=True,
        ),
        Variant(
            "pyro:fused-adam",
            "the SVI phase's loss, torch.optim.Adam(..., fused=True)",
            _trace_enum,
            fused_adam=True,
        ),
        Variant(
            "jit:direct",
            "JitTraceEnum_ELBO's differentiable_loss(model, guide, *batch.args) / N (DirectSVI)",
            _jit_trace_enum,
            phase=DirectSVI,
        ),
    ]
}


@dataclass
class Runner:
    """A variant bound to a trainer whose recipe is one phase: the variant's SVI phase, or
    (``--layouts``) the pretraining or SVI phase it times."""

    variant: Variant
    trainer: Trainer

    @property
    def phase(self) -> Phase:
        return self.trainer.recipe[0]

    def loss(self, batch: Batch) -> torch.Tensor:
        """The loss of ``batch`` per example, as the variant's phase computes it in training."""
        return self.phase.loss(self.trainer, batch)

    def step(self, batch: Batch) -> None:
        with self.variant.context():
            self.trainer.step(self.loss(batch))


def make_runner(
    model: GMVAE,
    x: torch.Tensor | np.ndarray,
    train_config: TrainConfig,
    variant: Variant,
    phase: Phase | None = None,
) -> Runner:
    """A trainer of ``model`` on ``x`` whose recipe is ``train_config.epochs`` of the variant's
    SVI phase (or ``phase``), its optimizer already made: the steps timed before an epoch need
    one, and ``Trainer.run`` keeps it (the phase asks for no new one)."""
    c = train_config
    if phase is None:
        elbo = None if variant.elbo is None else variant.elbo()
        phase = variant.phase(c.epochs, beta=c.beta, lr_decay=c.lr_decay, elbo=elbo)
    trainer = Trainer(model, x, c, recipe=Recipe([phase]), progress=False)
    if variant.fused_adam:
        trainer.optimizer = torch.optim.Adam(model.parameters(), lr=c.lr, fused=True)
    else:
        trainer.optimizer = trainer.make_optimizer()
    return Runner(variant, trainer)


def whole_batch(trainer: Trainer) -> Batch:
    """All of the trainer's rows as one batch, without an augmented view."""
    return Batch(torch.arange(len(trainer.x), device=trainer.device), trainer.x)


# ----------------------------------------------------------------------------------------------
# Set-up shared by the step and epoch measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_mnist(rows: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``rows`` MNIST digits ``(rows, 784)`` in [0, 1] from mnist8k, repeated when rows > 8000."""
    path = resolve_mnist8k()
    if path is None:
        sys.exit("mnist8k.npz not found: set PYRO_GMVAE_MNIST8K to its path")
    data = load_data(path)
    x = data.x if rows <= len(data) else np.resize(data.x, (rows, data.n_features))
    return np.ascontiguousarray(x[:rows]), data.image_shape


def model_config(args: argparse.Namespace, guide: str, clusters: int, image_shape) -> ModelConfig:
    """The library's default ModelConfig, with the benchmark's guide and K (and size overrides)."""
    overrides: dict[str, Any] = {
        "guide": guide,
        "clusters": clusters,
        "n_features": image_shape[0] * image_shape[1],
        "image_shape": tuple(image_shape),
    }
    if args.hidden is not None:
        overrides["hidden"] = tuple(args.hidden)
    if args.latent_dim is not None:
        overrides["latent_dim"] = args.latent_dim
    return dataclasses.replace(ModelConfig(), **overrides)


def train_config(args: argparse.Namespace, batch_size: int) -> TrainConfig:
    """The library's default TrainConfig, straight into the SVI phase."""
    return dataclasses.replace(
        TrainConfig(),
        batch_size=batch_size,
        pretrain_epochs=0,
        epochs=1,
        device=args.device,
        seed=args.seed,
        checkpoint_every=0,
    )


def build_model(config: ModelConfig, seed: int) -> GMVAE:
    pyro.clear_param_store()  # another model of the same name may have registered before
    pyro.set_rng_seed(seed)
    return GMVAE(config)


# ----------------------------------------------------------------------------------------------
# 1. Steps


def _short_error(e: Exception) -> str:
    """One line for the table: ``Type: message``, long runs of ``Tensor, `` collapsed."""
    message = re.sub(r"(Tensor, ){3,}", "Tensor, ..., ", str(e).splitlines()[0])
    return f"{type(e).__name__}: {message[:150]}"


def check_agreement(
    model: GMVAE, runners: dict[str, Runner], batch: Batch, seed: int
) -> dict[str, dict[str, Any]]:
    """Loss and gradient of each variant on ``batch`` against the hand-written loss (called
    directly, not through :class:`HandSVI`), on the same draws of z.

    A JIT-compiled loss draws z with ``torch.normal`` inside its graph, so it is compared with
    the hand-written loss drawing the same way, after the call that compiles it (which draws
    more). Returns ``{variant: {"loss", "rel_loss", "rel_grad"}}`` (or ``{"error"}``); relative
    errors are ``|a - b| / |b|`` for the loss and ``||a - b|| / ||b||`` over all gradients.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    beta = runners["hand"].phase.beta
    x, view = batch.x, batch.view

    def loss_and_grads(loss_fn: Callable[[], torch.Tensor]):
        pyro.set_rng_seed(seed)
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        return loss.detach(), grads

    references = {
        False: loss_and_grads(lambda: hand_loss(model, x, view, beta=beta)),
        True: loss_and_grads(lambda: hand_loss(model, x, view, beta=beta, draw=draw_like_jit)),
    }
    results: dict[str, dict[str, Any]] = {"hand": {"loss": float(references[False][0])}}
    for name, runner in runners.items():
        if name == "hand":
            continue
        jit = isinstance(runner.phase.elbo, JitTraceEnum_ELBO)
        ref_loss, ref_grads = references[jit]
        try:
            with runner.variant.context():
                if jit:
                    runner.loss(batch)  # compiles
                loss, grads = loss_and_grads(lambda r=runner: r.loss(batch))
        except Exception as e:  # JIT has open bugs: report, do not crash
            results[name] = {"error": _short_error(e)}
            continue
        diff = torch.sqrt(
            sum(((g - r).double() ** 2).sum() for g, r in zip(grads, ref_grads, strict=True))
        )
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref_grads))
        results[name] = {
            "loss": float(loss),
            "rel_loss": float((loss - ref_loss).abs() / ref_loss.abs()),
            "rel_grad": float(diff / norm),
        }
    return results


def time_steps(
    runners: dict[str, Runner], batch: Batch, repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Median forward and whole-step times (seconds) of each variant on ``batch``, interleaved
    round-robin.

    The forward time is the host's time to build the loss (on CUDA the kernels may still run);
    the step time is synchronised at both ends, so it is the device's time for the whole step.
    """
    device = batch.x.device
    results: dict[str, dict[str, Any]] = {}
    live = []
    for name, runner in runners.items():
        try:
            for _ in range(warmup):
                runner.step(batch)
            _sync(device)
            live.append(name)
            results[name] = {"forward": [], "step": []}
        except Exception as e:  # JIT has open bugs: report, do not crash
            results[name] = {"error": _short_error(e)}
    for r in range(repeats):
        # Rotate the order so that no variant always runs right after the same one.
        for name in live[r % len(live) :] + live[: r % len(live)]:
            runner = runners[name]
            with runner.variant.context():
                _sync(device)
                t0 = time.perf_counter()
                loss = runner.loss(batch)
                t1 = time.perf_counter()
                runner.trainer.step(loss)
                _sync(device)
                t2 = time.perf_counter()
            results[name]["forward"].append(t1 - t0)
            results[name]["step"].append(t2 - t1 + (t1 - t0))
    for name in live:
        times = results[name]
        results[name] = {
            "forward": statistics.median(times["forward"]),
            "step": statistics.median(times["step"]),
            "step_q1_q3": tuple(np.percentile(times["step"], [25, 75]).tolist()),
        }
    return results


def run_steps(args: argparse.Namespace, x: np.ndarray, image_shape) -> list[dict[str, Any]]:
    """Section 1: one row per (guide, batch, variant)."""
    rows = []
    for guide in args.guides:
        model = build_model(model_config(args, guide, args.step_clusters, image_shape), args.seed)
        for batch in args.step_batches:
            config = train_config(args, batch)
            runners = {
                name: make_runner(model, x[:batch], config, VARIANTS[name])
                for name in args.variants
            }
            rows_batch = whole_batch(runners["hand"].trainer)
            agreement = check_agreement(model, runners, rows_batch, args.seed)
            times = time_steps(runners, rows_batch, args.repeats, args.warmup)
            hand = times["hand"]["step"]
            for name in args.variants:
                row = {"guide": guide, "batch": batch, "clusters": args.step_clusters}
                row["variant"] = name
                row |= times[name]
                if "step" in times[name]:
                    row["ratio"] = times[name]["step"] / hand
                row["agreement"] = agreement.get(name, {})
                rows.append(row)
            print_step_rows(rows[-len(args.variants) :])
            del runners
    return rows


def print_steps_header(args: argparse.Namespace) -> None:
    print(
        f"\n## 1. One optimizer step (loss, backward, clip, Adam): median of {args.repeats} "
        f"after {args.warmup} warm-up, variants interleaved"
    )
    print(
        f"{'guide':<11}{'batch':>6}{'K':>5}  {'variant':<23}{'fwd ms':>9}{'step ms':>9}"
        f"{'IQR ms':>14}{'ratio':>7}  {'agrees with hand (loss / grad rel. err.)':<40}",
        flush=True,
    )


def print_step_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        head = f"{r['guide']:<11}{r['batch']:>6}{r['clusters']:>5}  {r['variant']:<23}"
        a = r["agreement"]
        if "error" in a:
            agree = f"failed: {a['error']}"
        elif "rel_loss" in a:
            agree = f"{a['rel_loss']:.1e} / {a['rel_grad']:.1e}"
        else:
            agree = f"reference (loss {a.get('loss', float('nan')):.4g})"
        if "error" in r:
            print(f"{head}{'failed':>9}  {r['error']}")
            continue
        q1, q3 = r["step_q1_q3"]
        print(
            f"{head}{r['forward'] * 1e3:>9.2f}{r['step'] * 1e3:>9.2f}"
            f"{f'{q1 * 1e3:.1f}-{q3 * 1e3:.1f}':>14}{r['ratio']:>7.3f}  {agree}"
        )
    sys.stdout.flush()


def print_steps_notes(args: argparse.Namespace) -> None:
    print(
        "fwd ms: host time to build the loss; step ms: loss + backward + clip + Adam, "
        "synchronised; IQR: 25th-75th percentile of the step; ratio: step / hand-written step "
        "(same process, model and batch). Agreement: on the same seed, before timing."
    )
    for name in args.variants:
        print(f"  {name:<23}{VARIANTS[name].note}")


# ----------------------------------------------------------------------------------------------
# 2. and 3. Epochs, each in a fresh process


def _status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB, or NaN."""
    kib = status_kib(field)
    return float("nan") if kib is None else kib / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux ``clear_refs``), so that the peak
    measures what follows and not the set-up (imports, data loading); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def epoch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one SVI epoch as configured by ``spec``: ``Trainer.run`` of a recipe that is the
    variant's SVI phase for one epoch (so a variant with a loss of its own trains with it). Run
    in its own process by :func:`run_epoch_config`, so the peak memory is this configuration's
    alone."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec)
    x, image_shape = load_mnist(spec["rows"])
    model = build_model(model_config(args, spec["guide"], spec["clusters"], image_shape), args.seed)
    variant = VARIANTS[spec["variant"]]
    runner = make_runner(model, x, train_config(args, spec["batch_size"]), variant)
    trainer = runner.trainer
    device = trainer.device
    del x
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mb = torch.cuda.memory_allocated(device) / 2**20
    else:
        peak_reset = _reset_peak_rss()
        base_mb = _status_mb("VmRSS")
    batch_idx = torch.arange(min(spec["batch_size"], len(trainer.x)), device=device)
    fixed = Batch(batch_idx, trainer.x[batch_idx])  # no augmented view: the step alone

    def timed(fn: Callable[[], Any], n: int) -> float:
        times = []
        for _ in range(n):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with variant.context():
        for _ in range(spec["warmup"]):
            trainer.step(runner.loss(trainer.minibatch(batch_idx)))
        step_s = timed(lambda: trainer.step(runner.loss(fixed)), spec["step_repeats"])
        prep_s = timed(lambda: trainer.minibatch(batch_idx), 3)
        _sync(device)
        start = time.perf_counter()
        record = trainer.run()[-1]  # the recipe's one epoch; the optimizer warmed up above
        _sync(device)
        epoch_s = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # VmHWM, not ru_maxrss: exec folds the parent's peak into ru_maxrss, and no reset
        # clears it, so a worker started by a big process would report its parent's peak.
        peak_mb = _status_mb("VmHWM") if peak_reset else float("nan")
    return {
        "epoch_s": epoch_s,
        "examples_per_s": len(trainer.x) / epoch_s,
        "batches": math.ceil(len(trainer.x) / spec["batch_size"]),
        "step_s": step_s,
        "prep_s": prep_s,
        "peak_mb": peak_mb,
        "train_mb": peak_mb - base_mb,
        "loss": record["loss"],
    }


def run_epoch_config(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`epoch_worker` in a fresh Python process; errors come back as ``{"error"}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        why = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
        lines = proc.stderr.strip().splitlines()
        return {"error": f"{why}: {lines[-1][:150] if lines else ''}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def epoch_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = {
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "hidden": args.hidden,
        "latent_dim": args.latent_dim,
        "warmup": args.epoch_warmup,
        "step_repeats": args.epoch_step_repeats,
    }
    specs = [
        base | {"guide": g, "clusters": k, "batch_size": b, "rows": args.rows, "variant": v}
        for v in args.epoch_variants
        for g in args.guides
        for b in args.batch_sizes
        for k in args.clusters
    ]
    if args.device.startswith("cuda") and not args.skip_gpu_epoch:
        batches = sorted({TrainConfig().batch_size, 1024})
        specs += [
            base
            | {"guide": g, "clusters": 10, "batch_size": b, "rows": GPU_EPOCH_ROWS}
            | {"variant": v}
            for v in args.gpu_epoch_variants
            for g in args.guides
            for b in batches
        ]
    return specs


def run_epochs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sections 2 and 3: one fresh process per configuration, each row printed as it comes."""
    print(
        "\n## 2. One SVI epoch (Trainer.run of a one-epoch SVI recipe, augmentation as in "
        "TrainConfig), one fresh process per row"
    )
    print(
        f"{'guide':<11}{'variant':<20}{'rows':>7}{'K':>5}{'batch':>6}{'ex/s':>9}{'epoch s':>9}"
        f"{'step ms':>9}{'prep ms':>9}{'outside':>9}{'peak MB':>9}{'train MB':>9}",
        flush=True,
    )
    rows = []
    for spec in epoch_specs(args):
        rows.append(spec | run_epoch_config(spec, args.epoch_timeout))
        print_epoch_row(rows[-1])
    return rows


def print_epoch_row(r: dict[str, Any]) -> None:
    head = f"{r['guide']:<11}{r['variant']:<20}{r['rows']:>7}{r['clusters']:>5}{r['batch_size']:>6}"
    if "error" in r:
        print(f"{head}  failed: {r['error']}", flush=True)
        return
    outside = 1 - r["rows"] / r["batch_size"] * r["step_s"] / r["epoch_s"]
    print(
        f"{head}{r['examples_per_s']:>9.0f}{r['epoch_s']:>9.2f}{r['step_s'] * 1e3:>9.1f}"
        f"{r['prep_s'] * 1e3:>9.2f}{outside:>9.0%}{r['peak_mb']:>9.0f}{r['train_mb']:>9.0f}",
        flush=True,
    )


def print_epochs_notes(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    memory = "peak CUDA MB allocated" if args.device.startswith("cuda") else "peak RSS MB"
    print(
        f"step ms: median of {args.epoch_step_repeats} steps on one fixed batch, outside the "
        "epoch. prep ms: the "
        f"trainer's minibatch gather + augmentation. outside: share of the epoch not explained by "
        f"rows/batch x step ms (batch preparation, bookkeeping; noisy). {memory}: peak of the "
        "whole process during warm-up and epoch (the peak of set-up is reset); train MB: that peak "
        "above the memory after set-up (model, data, trainer built). "
        "Variants hand* and jit:direct train with their own SVI phase (HandSVI, DirectSVI), "
        "*fused-adam with its own optimizer."
    )
    if any(r["rows"] > 8000 for r in rows):
        print(f"rows = {GPU_EPOCH_ROWS}: mnist8k repeated (tiled) to {GPU_EPOCH_ROWS} rows.")


# ----------------------------------------------------------------------------------------------
# Targets


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def evaluate_targets(
    args: argparse.Namespace, steps: list[dict[str, Any]], epochs: list[dict[str, Any]]
) -> list[tuple[str, bool | None, str]]:
    """``(target, passed or None when not measured, the measurement)`` for each target."""
    out: list[tuple[str, bool | None, str]] = []
    on_cpu = args.device == "cpu"
    for batch, key in ((256, "ratio_256"), (64, "ratio_64")):
        limit = TARGETS[key]
        for guide in args.guides:
            row = next(
                (
                    r
                    for r in steps
                    if r["guide"] == guide
                    and r["batch"] == batch
                    and r["clusters"] == 10
                    and r["variant"] == "pyro"
                    and "ratio" in r
                ),
                None,
            )
            name = f"step ratio pyro/hand <= {limit} at batch {batch}, K=10, CPU ({guide})"
            if row is None or not on_cpu:
                out.append((name, None, "not measured (needs --device cpu and this batch, K=10)"))
            else:
                out.append((name, row["ratio"] <= limit, f"{row['ratio']:.3f}"))
    for guide in args.guides:
        for batch in args.batch_sizes:
            ok_rows = [
                r
                for r in epochs
                if r["guide"] == guide
                and r["batch_size"] == batch
                and r["rows"] == args.rows
                and r["variant"] == "pyro"
                and "epoch_s" in r
            ]
            name = f"epoch cost at most linear in K ({guide}, batch {batch})"
            if len({r["clusters"] for r in ok_rows}) < 2:
                out.append((name, None, "needs two values of K"))
                continue
            lo = min(ok_rows, key=lambda r: r["clusters"])
            hi = max(ok_rows, key=lambda r: r["clusters"])
            exponent = math.log(hi["epoch_s"] / lo["epoch_s"]) / math.log(
                hi["clusters"] / lo["clusters"]
            )
            out.append(
                (
                    name,
                    exponent <= TARGETS["k_exponent"],
                    f"time ~ K^{exponent:.2f} from K={lo['clusters']} to {hi['clusters']}",
                )
            )
    for r in epochs:
        if r["rows"] == GPU_EPOCH_ROWS:
            name = (
                f"GPU epoch of 60k at K=10 < {TARGETS['gpu_epoch_s']} s "
                f"({r['guide']}, batch {r['batch_size']}, {r['variant']})"
            )
            if "epoch_s" in r:
                out.append((name, r["epoch_s"] < TARGETS["gpu_epoch_s"], f"{r['epoch_s']:.2f} s"))
            else:
                out.append((name, False, r.get("error", "")))
    if not args.device.startswith("cuda"):
        out.append(("GPU epoch of 60k at K=10 < 2 s", None, "run with --device cuda"))
    return out


def print_targets(targets: list[tuple[str, bool | None, str]]) -> None:
    print("\n## Targets (reported, not asserted)")
    for name, ok, measured in targets:
        print(f"  {_verdict(ok)}  {name}: {measured}")


# ----------------------------------------------------------------------------------------------
# Profile


_PROFILE_GROUPS = [
    ("pyro/poutine", "pyro.poutine: tracing, enumeration, messengers"),
    ("pyro/infer", "pyro.infer: TraceEnum_ELBO, Dice, validation checks"),
    ("pyro/ops", "pyro.ops: packed tensors, contraction, einsum"),
    ("pyro/primitives", "pyro.module / pyro.param / pyro.sample"),
    ("pyro/params", "pyro.module / pyro.param / pyro.sample"),
    ("pyro/distributions", "distributions: construction, validation, log_prob"),
    ("torch/distributions", "distributions: construction, validation, log_prob"),
    ("pyro/", "pyro: other"),
    ("pyro_gmvae/", "pyro_gmvae: model, guide, trainer"),
    ("torch/nn", "torch.nn: module calls (Python)"),
    ("torch/optim", "torch.optim: Adam (Python)"),
    ("torch/autograd", "backward: autograd (Python + C++ kernels)"),
    ("run_backward", "backward: autograd (Python + C++ kernels)"),
    ("torch/", "torch: other Python"),
    ("~", "C++ ops called from Python (the arithmetic itself)"),
]


def profile_steps(args: argparse.Namespace, x: np.ndarray, image_shape) -> None:
    """cProfile ``args.profile`` steps of each of "hand" and "pyro"; own time grouped by package.

    cProfile slows Python code more than C++ kernels, so these shares overstate Pyro's overhead;
    the variant timings of section 1 are the unbiased measure.
    """
    guide = args.guides[0]
    batch = args.step_batches[0]
    model = build_model(model_config(args, guide, args.step_clusters, image_shape), args.seed)
    config = train_config(args, batch)
    print(
        f"\n## Profile: {args.profile} steps, guide {guide}, batch {batch}, "
        f"K={args.step_clusters} (cProfile own time, ms per step)"
    )
    for name in ("hand", "pyro"):
        variant = VARIANTS[name]
        runner = make_runner(model, x[:batch], config, variant)
        rows = whole_batch(runner.trainer)
        for _ in range(args.warmup):
            runner.step(rows)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.profile):
            runner.step(rows)
        _sync(rows.x.device)
        profiler.disable()
        stats = pstats.Stats(profiler)
        groups: dict[str, float] = {}
        for (filename, _, function), (_, _, own, _, _) in stats.stats.items():
            key = (
                filename if filename != "~" else ("run_backward" if "backward" in function else "~")
            )
            label = next((g for prefix, g in _PROFILE_GROUPS if prefix in key), "other Python")
            groups[label] = groups.get(label, 0.0) + own
        total = sum(groups.values())
        print(f"{name}: {total / args.profile * 1e3:.2f} ms per step under the profiler")
        for label, own in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {own / args.profile * 1e3:8.2f}  {own / total:5.1%}  {label}")
        if name == "pyro":
            print("  top 12 functions by cumulative time:")
            stats.sort_stats("cumulative").print_stats(12)


#: ``--layouts`` and ``--precisions``: the two models each times, by name, and the title of its
#: table. The first is the one the flag is about, the second what it is measured against.
PAIRS = {
    "layouts": (
        ("library", "contiguous"),
        f"Layout of the convolutions: {CONV_LAYOUT} against contiguous",
    ),
    "precisions": (
        ("bfloat16", "float32"),
        "Precision of the convolutional networks: bfloat16 against float32",
    ),
}


def pair_models(compare: str, model_cfg: ModelConfig, seed: int) -> dict[str, GMVAE]:
    """The two models of a ``PAIRS`` comparison, built from one seed, so with the same weights:
    the library's layout of the convolutions and the same weights contiguous, or the networks
    under bfloat16 autocast and the same networks in float32 (``--precision``)."""
    if compare == "layouts":
        contiguous = build_model(model_cfg, seed).to(memory_format=torch.contiguous_format)
        return {"library": build_model(model_cfg, seed), "contiguous": contiguous}
    bf16 = dataclasses.replace(model_cfg, precision="bfloat16")
    return {"bfloat16": build_model(bf16, seed), "float32": build_model(model_cfg, seed)}


def run_pair(
    args: argparse.Namespace, x: np.ndarray, image_shape, compare: str
) -> list[dict[str, Any]]:
    """``--layouts`` or ``--precisions``: one pretraining step and one SVI step
    (``Trainer.step`` on each phase's loss) of two models of :func:`pair_models`, built from
    one seed, on the same batch, interleaved round-robin in one process. Prints the medians,
    their ratio and the relative difference of the two losses before each phase's steps: for
    the layouts nil before the first step, then what the earlier steps' round-off carried on
    (the arithmetic is the same; the order of float additions is not); for the precisions the
    bfloat16 products' round-off as well."""
    (first, second), title = PAIRS[compare]
    print(
        f"\n## {title}, ms a step "
        f"(median of {args.repeats}, after {args.warmup} warm-up; {args.threads} threads)"
    )
    print(f"{'guide':<11}{'batch':>6}  {'phase':<9}{first:>11}{second:>11}{'ratio':>7}  loss diff")
    rows = []
    for guide in args.guides:
        models = pair_models(
            compare, model_config(args, guide, args.step_clusters, image_shape), args.seed
        )
        for batch in args.step_batches:
            train_cfg = train_config(args, batch)
            rows_batch = None
            for phase in (Pretrain(1), SVI(1)):
                # "pyro": the trainer's own step, on a trainer whose recipe is this phase.
                runners = {
                    name: make_runner(model, x[:batch], train_cfg, VARIANTS["pyro"], phase)
                    for name, model in models.items()
                }
                if rows_batch is None:  # one batch, its moved views too, for every row
                    rows_batch = runners[first].trainer.minibatch(torch.arange(batch))
                # Before this phase's steps, the same draws of z for both.
                pyro.set_rng_seed(args.seed)
                a = float(runners[first].loss(rows_batch))
                pyro.set_rng_seed(args.seed)
                b = float(runners[second].loss(rows_batch))
                times = time_steps(runners, rows_batch, args.repeats, args.warmup)
                for name, result in times.items():
                    if "error" in result:
                        sys.exit(f"--{compare}, {name}, {phase.name}: {result['error']}")
                median = {name: result["step"] for name, result in times.items()}
                row = {
                    "guide": guide,
                    "batch": batch,
                    "phase": phase.name,
                    f"{first}_s": median[first],
                    f"{second}_s": median[second],
                    "ratio": median[first] / median[second],
                    "loss_relative_difference": abs(a - b) / max(abs(b), 1e-12),
                }
                rows.append(row)
                print(
                    f"{guide:<11}{batch:>6}  {phase.name:<9}{median[first] * 1e3:>11.1f}"
                    f"{median[second] * 1e3:>11.1f}{row['ratio']:>7.2f}  "
                    f"{row['loss_relative_difference']:.0e}"
                )
    return rows


# ----------------------------------------------------------------------------------------------
# Command line


def describe_machine(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "load_average": os.getloadavg(),
    }
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--grid", choices=sorted(GRIDS), default="full", help="preset of the flags below"
    )
    p.add_argument("--guides", nargs="+", default=["marginal", "enumerated"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    p.add_argument("--step-batches", type=int, nargs="+", help="batch sizes of section 1")
    p.add_argument("--step-clusters", type=int, help="K of section 1 (default 10)")
    p.add_argument("--clusters", type=int, nargs="+", help="K values of the epoch grid")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes of the epoch grid")
    p.add_argument("--rows", type=int, help="MNIST rows per epoch (8000: all of mnist8k)")
    p.add_argument(
        "--epoch-variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["pyro"],
        help="variants timed over whole epochs (hand* and jit:direct as their own SVI phase)",
    )
    p.add_argument(
        "--gpu-epoch-variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["pyro", "pyro:all", "jit:direct", "hand"],
        help="variants timed over the 60,000-row epoch on CUDA",
    )
    p.add_argument("--hidden", type=int, nargs="+", help="override ModelConfig.hidden")
    p.add_argument("--latent-dim", type=int, help="override ModelConfig.latent_dim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-steps", action="store_true", help="skip section 1")
    p.add_argument("--skip-epochs", action="store_true", help="skip sections 2 and 3")
    p.add_argument("--skip-gpu-epoch", action="store_true", help="skip section 3 on CUDA")
    p.add_argument("--epoch-warmup", type=int, help="untimed steps before each epoch (2)")
    p.add_argument(
        "--epoch-step-repeats", type=int, help="isolated steps timed beside each epoch (3)"
    )
    p.add_argument("--epoch-timeout", type=float, default=600, help="seconds per epoch process")
    p.add_argument("--profile", type=int, default=0, help="only profile this many steps")
    p.add_argument(
        "--layouts",
        action="store_true",
        help="only time pretraining and SVI steps with the convolutions' layout against contiguous",
    )
    p.add_argument(
        "--precisions",
        action="store_true",
        help="only time pretraining and SVI steps with the networks in bfloat16 against float32",
    )
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = GRIDS[args.grid]
    defaults = {
        "step_batches": [64, 256],
        "step_clusters": 10,
        "epoch_warmup": 2,
        "epoch_step_repeats": 3,
    } | preset
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if "hand" not in args.variants:
        args.variants = ["hand", *args.variants]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        warnings.filterwarnings("ignore")
        print(json.dumps(epoch_worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    machine = describe_machine(args)
    mcfg = model_config(args, args.guides[0], args.step_clusters, (28, 28))
    tcfg = train_config(args, TrainConfig().batch_size)
    print("# pyro_gmvae speed benchmark")
    print(
        "command: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    )
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(
        f"model (ModelConfig defaults, guide and K per row): hidden {list(mcfg.hidden)}, latent "
        f"{mcfg.latent_dim}, likelihood {mcfg.likelihood}, learn_weights {mcfg.learn_weights}; "
        f"{GMVAE(mcfg).n_parameters():,} parameters (marginal guide, K={args.step_clusters})"
    )
    print(
        f"training (TrainConfig defaults): lr {tcfg.lr}, clip_norm {tcfg.clip_norm}, beta "
        f"{getattr(tcfg, 'beta', 1.0)}, augmentation {getattr(tcfg, 'augment_mode', '')} "
        f"rotation {tcfg.augment_rotation} shift {tcfg.augment_shift}; data: mnist8k (28x28)"
    )
    x, image_shape = load_mnist(max(args.step_batches))
    if args.profile:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profile_steps(args, x, image_shape)
        return
    for compare in PAIRS:
        if getattr(args, compare):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = run_pair(args, x, image_shape, compare)
            if args.json is not None:
                record = {"machine": machine, compare: rows}
                args.json.write_text(json.dumps(record, indent=1) + "\n")
            return

    steps: list[dict[str, Any]] = []
    if not args.skip_steps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JIT tracer and enumeration warnings
            print_steps_header(args)
            steps = run_steps(args, x, image_shape)
        print_steps_notes(args)
    epochs = [] if args.skip_epochs else run_epochs(args)
    if epochs:
        print_epochs_notes(epochs, args)
    targets = evaluate_targets(args, steps, epochs)
    print_targets(targets)
    print(f"\nload average at the end: {os.getloadavg()}")
    if args.json is not None:
        result = {"machine": machine, "steps": steps, "epochs": epochs, "targets": targets}
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
