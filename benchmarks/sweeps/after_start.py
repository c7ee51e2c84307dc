"""What follows the mixture start (issue 14): the default anchor and SVI against variants that
re-anchor at the model's own clusters, from one pretrained network and one start per seed.

All rows of the data set (no split), the default network, pretraining and start of
``TrainConfig``; the pretrained weights and the start are cached in ``--cache`` so a second call
with other variants skips them. A variant is a recipe of the phases after pretraining, begun by a
:class:`MixtureStart` that holds the start found once:

- ``default``: ``default_recipe``'s anchor and SVI.
- ``relabel``: the anchor's steps in two halves, the second holding each row at the model's own
  cluster (``model.predict``) as the first half left it, then SVI.
- ``relabel-long``: the whole default anchor, then as many steps again holding each row at the
  model's own cluster, then SVI.
- ``long``: the default anchor twice as long, at the start's clusters throughout (the control
  of ``relabel-long``).
- ``relabel-every``: the anchor's steps in six parts, each after the first re-holding every row at
  the model's own cluster.
- ``selflabel``: the default anchor, then as many steps of the summed-out ELBO plus
  ``10 * cross-entropy`` of q(y|x) on a strongly moved copy of each row (rotated up to 25 degrees,
  scaled by up to 15%, shifted up to 0.15 of the width, half of them with a square of 0.35 of the
  side blanked) against the model's own cluster of the row as it is, where q(y|x) of the row is
  above 0.95 (self-labelling, as SCAN's last step and FixMatch do; images only), then SVI.
- ``fitq``: the default anchor and SVI, with q(y|x) fitted to the start for
  ``cluster_encoder_steps`` steps (that many epochs, which the library's cap cuts to the steps),
  instead of ``cluster_encoder_epochs`` (a small data set's five epochs are few steps; enumerated
  guide).
- ``steps``: the default anchor with ``--anchor-min-steps`` at ``--anchor-steps``: as many
  optimizer steps on every data set (on `digits` four times the 480 of 60 epochs). Since commit
  9822bad this is the default's anchor; the runs in ``results/sweep-anchor-steps`` were made
  with the earlier minimum of 320 steps.
- ``anneal``: the default anchor, then SVI whose loss begins as the anchor's and becomes the
  summed-out ELBO over its first half (:class:`AnnealedSVI`: the KL weight falls from
  ``--anchor-beta`` to 1 and the classification term at the start's clusters from
  ``--anchor-classify`` to 0); ``anneal-beta`` and ``anneal-classify`` anneal one of the two;
  ``anneal@F`` anneals over the fraction F of SVI.
- ``decay``: the default anchor with its learning rate falling step by step from ``--lr``
  towards ``--svi-lr`` (``floor(n / period)`` steps of the phase's schedule are planned, of
  which its last epoch has taken all but one: ``digits``' 240 epochs end at 1.1e-4), so SVI
  continues near the rate the anchor ended with;
  ``decay-V``: that anchor, then what variant ``V`` puts after its anchor (``decay-anneal``).
- ``umap``: the default anchor and SVI from the library's ``umap`` start (10-d UMAP maps of the
  codes and the data side by side, ``balanced_clusters``; since commit f140e0a one map per
  ``--umap-neighbors`` size, the most even kept), instead of the cached t-SNE start;
  ``umap:V`` the variant ``V`` (``long``, ``relabel``, ...) from that start.

``--guide enumerated`` runs every variant with the enumerated guide, q(y|x) q(z|x,y): the cached
network's weights (pretrained with the default marginal guide, which pretraining does not use)
are loaded into a model whose cluster encoder q(y|x) is new and whose per-cluster offsets of
q(z|x,y) are zero; the start then fits q(y|x) to its clusters, as ``gmvae train --guide
enumerated`` does.

Labels score each variant only (the start, each epoch, the end); nothing chooses by them.

    OMP_NUM_THREADS=1 python benchmarks/sweeps/after_start.py --data PATH --name mnist8k \
        --seed 1 --variants default relabel --out .exp/after_start
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_gmvae.config import AUTO_START, ModelConfig, TrainConfig, start_for
from pyro_gmvae.data import load_data
from pyro_gmvae.metrics import clustering_scores
from pyro_gmvae.model import GMVAE
from pyro_gmvae.start import (
    DATA_COMPONENTS,
    STARTS,
    Start,
    find_start,
    one_hot,
    principal_components,
)
from pyro_gmvae.train import (
    SVI,
    Anchor,
    MixtureStart,
    Recipe,
    Trainer,
    default_recipe,
    strongly_moved,
)


def holding(start: Start):
    """A start function that returns ``start``, found beforehand, whatever it is given."""

    def held_start(codes, data, n_clusters, config, uniform):
        return start

    return held_start


def relabel(trainer: Trainer) -> None:
    """An ``on_begin`` action: hold each row at the model's own most probable cluster."""
    trainer.assignments = torch.as_tensor(trainer.model.predict(trainer.x), device=trainer.device)


@dataclass
class SelfLabel(SVI):
    """The summed-out ELBO plus ``weight`` times the cross-entropy of q(y|x) on a strongly moved
    copy of each row against the model's own cluster of the row, where that is above
    ``threshold``."""

    name: str = "selflabel"
    weight: float = 10.0
    threshold: float = 0.95

    def loss(self, trainer: Trainer, batch) -> torch.Tensor:
        model = trainer.model
        with torch.no_grad():
            confidence, own = model.cluster_log_proba(batch.x).exp().max(-1)
        log_q = model.cluster_log_proba(strongly_moved(batch.x, trainer.image_shape))
        confident = (confidence > self.threshold).float()
        cross_entropy = -(log_q.gather(-1, own[:, None]).squeeze(-1) * confident).mean()
        return super().loss(trainer, batch) + self.weight * cross_entropy


@dataclass
class AnnealedSVI(SVI):
    """SVI whose loss begins as the anchor's and becomes the summed-out ELBO: in the first
    ``fraction`` of the phase's steps, ``w`` falls linearly from 1 to 0 and the loss is the
    summed-out ELBO with KL weight ``1 + w (anchor_beta - 1)`` plus ``w * anchor_classify``
    times the cross-entropy of q(y|x) at each row's start cluster (``parts``: which of the two
    are annealed, ``beta``, ``classify`` or both); then the ELBO alone."""

    name: str = "svi"
    fraction: float = 0.5
    anchor_beta: float = 3.0
    anchor_classify: float = 10.0
    parts: tuple[str, ...] = ("beta", "classify")

    def weight(self, trainer: Trainer) -> float:
        index, position = trainer.locate(trainer.epoch)
        steps = trainer.lengths[index] * trainer.batches_per_epoch
        done = position * trainer.batches_per_epoch + trainer.batch
        return max(0.0, 1.0 - done / (self.fraction * steps))

    def loss(self, trainer: Trainer, batch) -> torch.Tensor:
        w = self.weight(trainer)
        beta = 1.0 + w * (self.anchor_beta - 1.0) if "beta" in self.parts else 1.0
        loss = (
            self.elbo.differentiable_loss(
                trainer.model_fn, trainer.guide_fn, *batch.args, kl_scale=beta, **batch.plate
            )
            / batch.examples
        )
        if w > 0 and "classify" in self.parts:
            y = trainer.assignments[batch.idx]
            log_q = trainer.model.cluster_log_proba(batch.seen)
            loss = loss - w * self.anchor_classify * log_q.gather(-1, y.unsqueeze(-1)).mean()
        return loss


def variant(name: str, start: Start, cfg: TrainConfig, n_batches: int) -> Recipe:
    base = default_recipe(cfg)
    anchor = dataclasses.replace(base["anchor"], on_begin=[MixtureStart(holding(start))])
    svi = base["svi"]

    def part(phase: Anchor, fraction: float, name: str, first: bool) -> Anchor:
        return dataclasses.replace(
            phase,
            epochs=max(1, round(phase.epochs * fraction)),
            max_steps=max(1, round(phase.max_steps * fraction)),
            min_steps=max(1, round(phase.min_steps * fraction)),
            name=name,
            on_begin=phase.on_begin if first else [relabel],
            new_optimizer=first,
        )

    if name.startswith("decay"):
        # The anchor's learning rate falls from --lr to --svi-lr by its end, step by step (every
        # tenth of the phase, or every 10 epochs of a phase that min_steps lengthened).
        n = anchor.length(n_batches)
        period = 10 if n >= anchor.epochs else 10 * n / anchor.epochs
        decays = max(1, math.floor(n / period + 1e-9))
        factor = (cfg.svi_lr / cfg.lr) ** (1 / decays)
        anchor = dataclasses.replace(anchor, lr_decay=factor)
        rest = name.removeprefix("decay").lstrip("-") or "default"
        recipe = variant(rest, start, cfg, n_batches)
        return Recipe([anchor, *list(recipe)[1:]])
    if name.startswith("anneal"):
        # anneal, anneal-beta, anneal-classify; a suffix @F: the fraction of SVI annealed
        kind, _, fraction = name.partition("@")
        parts = {"anneal": ("beta", "classify"), "anneal-beta": ("beta",)}.get(kind, ("classify",))
        annealed = AnnealedSVI(
            svi.epochs,
            max_steps=svi.max_steps,
            lr=svi.lr,
            lr_decay=svi.lr_decay,
            fraction=float(fraction or 0.5),
            anchor_beta=cfg.anchor_beta,
            anchor_classify=cfg.anchor_classify,
            parts=parts,
        )
        return Recipe([anchor, annealed])
    if name == "default":
        phases = [anchor]
    elif name == "steps":
        phases = [dataclasses.replace(anchor, min_steps=anchor.max_steps)]
    elif name == "fitq":
        # As many epochs as steps: start_mixture cuts them to cluster_encoder_steps.
        epochs = cfg.cluster_encoder_steps
        held = MixtureStart(holding(start), cluster_encoder_epochs=epochs)
        phases = [dataclasses.replace(anchor, on_begin=[held])]
    elif name == "relabel":
        phases = [part(anchor, 0.5, "anchor", True), part(anchor, 0.5, "reanchor", False)]
    elif name == "relabel-long":
        phases = [anchor, part(anchor, 1.0, "reanchor", False)]
    elif name == "long":
        phases = [part(anchor, 2.0, "anchor", True)]
    elif name == "selflabel":
        steps = {k: getattr(anchor, k) for k in ("epochs", "max_steps", "min_steps")}
        phases = [anchor, SelfLabel(**steps, new_optimizer=True)]
    elif name == "relabel-every":
        phases = [part(anchor, 1 / 6, f"anchor{i}" if i else "anchor", i == 0) for i in range(6)]
    else:
        raise SystemExit(f"unknown variant {name!r}")
    return Recipe([*phases, svi])


def pretrained(data, seed: int, cfg: TrainConfig, cache: Path, decay: float = 1.0):
    """The pretrained model's weights and the start, cached per data set, seed and length."""
    path = cache / f"{data.name}_{seed}_{cfg.pretrain_steps}_{decay}.pt"
    pyro.set_rng_seed(seed)
    # The marginal guide's network: pretraining uses neither q(y|x) nor the offsets of
    # q(z|x,y), and the caches were written with it (--guide enumerated adds them fresh).
    model = GMVAE(
        ModelConfig(n_features=data.n_features, image_shape=data.image_shape, guide="marginal")
    )
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["weights"])
        return model, saved["start"], saved["info"]
    recipe = Recipe([dataclasses.replace(default_recipe(cfg)["pretrain"], lr_decay=decay)])
    tr = Trainer(model, data.x, cfg, recipe=recipe, labels=data.labels, progress=False)
    t0 = time.time()
    history = tr.run()
    info = {"pretrain_s": time.time() - t0, "pretrain_loss": [r["loss"] for r in history]}
    t0 = time.time()
    found = find_start(
        start_for(data.n_features) if cfg.init == AUTO_START else cfg.init,
        tr.codes(),
        tr.host_rows(),
        model.n_clusters,
        cfg,
        not model.config.learn_weights,
    )
    start = Start(one_hot(found.assignments, model.n_clusters), found.source, found.scores)
    info |= {"start_s": time.time() - t0, "source": found.source, "scores": found.scores}
    info["start"] = clustering_scores(data.labels, found.assignments)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": model.state_dict(), "start": start, "info": info}, path)
    return model, start, info


#: The one neighbourhood size of the umap start when the UMAP sweeps beside this script ran
#: (N2D's, 20); --umap-neighbors has since taken several.
UMAP_NEIGHBORS = 20


def map_sources(spec: str, name: str, seed: int, cache: Path):
    """What the start maps, from the cached (or newly pretrained) default network of ``seed``:
    ``(data, config, info, sources)``, where ``sources`` holds the codes and the data's first 50
    principal components ``(N, D)`` in float64 and ``info`` the default start's record."""
    data = load_data(spec)
    data.name = name
    config = TrainConfig(seed=seed, device="cpu")
    model, _, info = pretrained(data, seed, config, cache)
    sources = {
        "codes": model.encode(data.x).astype(np.float64),
        "data": principal_components(np.asarray(data.x), DATA_COMPONENTS, seed),
    }
    return data, config, info, sources


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["default"])
    p.add_argument("--out", type=Path, default=Path(".exp/after_start"))
    p.add_argument("--pretrain-steps", type=int, help="default: TrainConfig's")
    p.add_argument("--pretrain-lr-decay", type=float, default=1.0, help="per tenth of pretraining")
    p.add_argument("--guide", default="marginal", choices=["marginal", "enumerated"])
    a = p.parse_args()
    data = load_data(a.data)
    data.name = a.name
    cfg = TrainConfig(seed=a.seed, device="cpu")
    if a.pretrain_steps is not None:
        cfg = dataclasses.replace(cfg, pretrain_steps=a.pretrain_steps, pretrain_epochs=10**6)
    model, start, info = pretrained(data, a.seed, cfg, a.out / "cache", a.pretrain_lr_decay)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    print(json.dumps({k: v for k, v in info.items() if k != "pretrain_loss"}), flush=True)
    umap_start = None
    n_batches = math.ceil(len(data.x) / cfg.batch_size)
    for name in a.variants:
        pyro.clear_param_store()
        if a.guide == "enumerated":
            pyro.set_rng_seed(a.seed)
            config = ModelConfig(
                n_features=data.n_features, image_shape=data.image_shape, guide="enumerated"
            )
            model = GMVAE(config)
            missing, unexpected = model.load_state_dict(base, strict=False)
            new = ("cluster_encoder.", "encoder.cluster_offset.")
            assert not unexpected and all(k.startswith(new) for k in missing), (missing, unexpected)
        else:
            model.load_state_dict(base)
        if name.split(":")[0] == "umap":
            if umap_start is None:  # the same network, so the same start for every variant
                codes = model.encode(data.x)
                umap_start = STARTS["umap"](codes, data.x, model.n_clusters, cfg, True)
            recipe = variant(name.partition(":")[2] or "default", umap_start, cfg, n_batches)
        else:
            recipe = variant(name, start, cfg, n_batches)
        tr = Trainer(model, data.x, cfg, recipe=recipe, labels=data.labels, progress=False)
        t0 = time.time()
        history = tr.run()
        record = {
            "data": a.name,
            "seed": a.seed,
            "pretrain_steps": cfg.pretrain_steps,
            "pretrain_lr_decay": a.pretrain_lr_decay,
            "variant": name,
            "guide": a.guide,
            "start_accuracy": (
                clustering_scores(data.labels, umap_start.assignments)["accuracy"]
                if name.split(":")[0] == "umap"
                else info["start"]["accuracy"]
            ),
            **clustering_scores(data.labels, model.predict(data.x)),
            "seconds": time.time() - t0,
            "phases": [h["phase"] for h in history],
            "traj": [round(h["accuracy"], 4) for h in history],
            "loss": [round(h["loss"], 3) for h in history],
        }
        short = {k: v for k, v in record.items() if k not in ("traj", "loss", "phases")}
        print(json.dumps(short), flush=True)
        with open(a.out / "results.jsonl", "a") as f:
            f.write(json.dumps(record | {"pretrain_loss": info["pretrain_loss"]}) + "\n")


if __name__ == "__main__":
    main()
