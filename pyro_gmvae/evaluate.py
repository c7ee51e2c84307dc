"""Evaluating a fitted GMVAE on data it may never have seen: clusters, ELBO and log p(x).

- :func:`elbo_per_example`: the ELBO of each example, y summed out exactly, from the same
  enumerated traces that ``TraceEnum_ELBO`` builds (so the per-example values add up to its loss);
- :func:`log_likelihood`: an importance-weighted estimate of log p(x), exact over y, sampled over z;
- :func:`evaluate`: both, plus clustering scores against the labels when the data has them.

Cluster assignments come from the trained model alone (:meth:`GMVAE.predict`): nothing is refitted
on the evaluation data, so scores on held-out data measure generalisation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer.enum import get_importance_trace

from .dataset import Dataset, ScaledRows
from .errors import DataError
from .metrics import class_accuracy, clustering_scores
from .model import GMVAE
from .rng import forked_seed

#: The most importance samples per example: beyond, the estimate's gain is unmeasurable and its
#: cost is hours (memory stays bounded: the samples are drawn in chunks).
MAX_NUM_SAMPLES = 100_000

# The model's only plate is "data": enumeration dims start left of it, as in Trainer's ELBO.
MAX_PLATE_NESTING = 1


@contextlib.contextmanager
def _inference_mode(model: GMVAE) -> Iterator[None]:
    """No gradients and eval mode (for networks with dropout or batch norm), restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _enumerated_traces(model: GMVAE, x: torch.Tensor):
    """The guide trace and the model trace replayed against it, enumerated as TraceEnum_ELBO does:
    the guide's enumerated sites take dims from ``-1 - MAX_PLATE_NESTING`` leftwards, the model's
    own enumerated sites the dims left of those."""
    guide = poutine.enum(model.guide, first_available_dim=-1 - MAX_PLATE_NESTING)
    joint = poutine.enum(model.model)  # continues the guide's allocation of dims
    return get_importance_trace("flat", MAX_PLATE_NESTING, joint, guide, (x,), {})


def _enumerated_dims(trace, skip: Collection[str] = ()) -> set[int]:
    return {
        site["infer"]["_enumerate_dim"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and "_enumerate_dim" in site["infer"] and name not in skip
    }


def _sample_log_probs(trace) -> list[torch.Tensor]:
    return [site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample"]


def _elbo_of_traces(model_trace, guide_trace, n: int) -> torch.Tensor:
    """Per-example ELBO ``(n,)`` of one draw of z.

    With a variable ``y_m`` enumerated in the model (marginal guide) and ``y_g`` in the guide
    (enumerated guide), the ELBO of example i is

        sum_{y_g} q(y_g|x_i) [ log sum_{y_m} p(x_i, y_g, y_m, z) - log q(y_g, z | x_i) ],

    which is what TraceEnum_ELBO computes before summing over examples.
    """
    guide_dims = _enumerated_dims(guide_trace)
    model_dims = _enumerated_dims(model_trace, skip=set(guide_trace.nodes))
    log_p = sum(_sample_log_probs(model_trace))
    log_q = sum(_sample_log_probs(guide_trace))
    for dim in sorted(model_dims):
        log_p = log_p.logsumexp(dim, keepdim=True)
    elbo = log_p - log_q
    if guide_dims:
        log_weights = sum(
            site["log_prob"]
            for site in guide_trace.nodes.values()
            if site["type"] == "sample" and "_enumerate_dim" in site["infer"]
        )  # log q(y_g|x): the probability of each enumerated value
        elbo = log_weights.exp() * elbo
        for dim in sorted(guide_dims):
            elbo = elbo.sum(dim, keepdim=True)
    if elbo.numel() != n:
        raise ValueError(
            f"the ELBO terms have shape {tuple(elbo.shape)}, not one value per example ({n}): "
            "a sample site outside the 'data' plate cannot be split between examples"
        )
    return elbo.reshape(n)


def elbo_per_example(
    model: GMVAE,
    x: np.ndarray | torch.Tensor | ScaledRows,
    num_particles: int = 1,
    batch_size: int = 1024,
) -> torch.Tensor:
    """The ELBO of each example, ``x (N, D) -> (N,)``, with y summed out exactly.

    Runs the guide and the model under parallel enumeration (as ``TraceEnum_ELBO`` does) and
    reduces the log-probabilities per example: summed over the enumerated guide's q(y|x), or
    ``logsumexp`` over y in the model for the marginal guide. z is drawn from the guide
    (``num_particles`` draws averaged) with torch's global random state, so
    ``elbo_per_example(model, x).sum() == -TraceEnum_ELBO(max_plate_nesting=1)
    .differentiable_loss(model.model, model.guide, x)`` from the same state (one batch).
    ``batch_size`` rows at a time (:meth:`GMVAE.batches`: a
    :class:`~pyro_gmvae.dataset.ScaledRows` is read a chunk at a time, once per particle).
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, not {num_particles}")
    if not isinstance(x, ScaledRows):
        x = model.as_tensor(x)  # converted and checked once, not once per particle
    with _inference_mode(model):
        total = torch.zeros(len(x), device=model.device)
        for _ in range(num_particles):
            total += torch.cat(
                [
                    _elbo_of_traces(*_enumerated_traces(model, xb), len(xb))
                    for xb in model.batches(x, batch_size)
                ]
            )
    return total / num_particles


def _proposal_samples(
    model: GMVAE, x: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws of z per example from the guide's marginal q(z|x) and their log
    density: ``(S, N, Z)`` and ``(S, N)``.

    The distributions are read off the guide's own trace. For the enumerated guide the proposal
    is the mixture ``sum_y q(y|x) q(z|x,y)``, whose density is exact over y.
    """
    trace = poutine.trace(
        poutine.enum(model.guide, first_available_dim=-1 - MAX_PLATE_NESTING)
    ).get_trace(x)
    q_z = trace.nodes["z"]["fn"]
    if "y" not in trace.nodes:  # marginal guide: q(z|x), batch (N,)
        z = q_z.sample((num_samples,))
        return z, q_z.log_prob(z)
    # Enumerated guide: q(y|x) batch (N,) over K values, q(z|x,y) batch (K, N).
    q_y = trace.nodes["y"]["fn"]
    y = q_y.sample((num_samples,))  # (S, N)
    z_all = q_z.sample((num_samples,))  # (S, K, N, Z): one draw per cluster, keep the chosen one
    index = y[:, None, :, None].expand(-1, 1, -1, z_all.shape[-1])
    z = z_all.gather(1, index).squeeze(1)  # (S, N, Z)
    log_q_y = q_y.logits.log_softmax(-1).T  # (K, N)
    log_q = (log_q_y + q_z.log_prob(z.unsqueeze(1))).logsumexp(1)  # (S, N)
    return z, log_q


def log_likelihood(
    model: GMVAE,
    x: np.ndarray | torch.Tensor | ScaledRows,
    num_samples: int = 100,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) for each example, ``x (N, D) -> (N,)``.

    ``log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log r(z_s|x)] - log S`` with
    ``z_s ~ r(z|x)`` for ``s = 1..S``: p(z) is the prior mixture, summed exactly over the K
    clusters, and the proposal r is the guide's q(z|x) (marginal guide) or its mixture
    ``sum_y q(y|x) q(z|x,y)`` (enumerated guide). The estimate is a lower bound in expectation
    that tightens as ``num_samples`` grows (Burda et al. 2016); with ``num_samples=1`` it is an
    ELBO with y marginalised in both model and proposal, never below :func:`elbo_per_example`
    in expectation.

    Samples are drawn with torch's global random state, ``batch_size`` examples at a time
    (default: about 8192 decoder evaluations per batch; :meth:`GMVAE.batches`, so a
    :class:`~pyro_gmvae.dataset.ScaledRows` is read a chunk at a time).
    """
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise ValueError(f"num_samples must be in 1..{MAX_NUM_SAMPLES}, not {num_samples}")
    batch_size = batch_size or max(1, 8192 // num_samples)
    chunk = max(1, 8192 // batch_size)  # samples drawn at once: about 8192 decoder evaluations

    def log_weights(xb: torch.Tensor, n: int) -> torch.Tensor:
        z, log_q = _proposal_samples(model, xb, n)  # (n, B, Z), (n, B)
        log_px_z = model.likelihood(model.decoder(z)).log_prob(xb)  # (n, B)
        return log_px_z + model.cluster_log_joint(z).logsumexp(0) - log_q  # log p(z) exact

    def estimate(xb: torch.Tensor) -> torch.Tensor:
        sizes = [chunk] * (num_samples // chunk) + [num_samples % chunk] * (num_samples % chunk > 0)
        total = torch.stack([log_weights(xb, n).logsumexp(0) for n in sizes]).logsumexp(0)
        return total - math.log(num_samples)

    with _inference_mode(model):
        return torch.cat([estimate(xb) for xb in model.batches(x, batch_size)])


def checked_input(model: GMVAE, dataset: Dataset) -> torch.Tensor | ScaledRows:
    """``dataset.x`` as the model reads it, ``(N, D)``, checked to have the model's features
    and to lie in its likelihood's support (:meth:`GMVAE.check_input`): a tensor on the
    model's device, or a :class:`~pyro_gmvae.dataset.ScaledRows` left on disk.

    Raises:
        DataError: when it does not, naming the data and what the model was trained on.
    """
    expected = model.config.n_features
    if dataset.n_features != expected:
        shape = model.config.image_shape
        raise DataError(
            f"{dataset.name} has {dataset.n_features} features per example but the model was "
            f"trained on {expected}; use data of the same kind as its training data"
            + (f" ({shape[0]}x{shape[1]} images)" if shape else " (a table)")
        )
    return model.check_input(dataset.x, name=dataset.name)


def evaluate(
    model: GMVAE,
    dataset: Dataset,
    *,
    num_samples: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    classes: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` without refitting anything on it.

    Returns a JSON-serialisable dict:

    - ``n``: number of examples; ``n_clusters``: K; ``num_samples``: S used for ``log_likelihood``;
    - ``cluster_sizes``: examples assigned to each of the K clusters (``model.predict``), a list;
    - ``elbo``: mean ELBO per example (nats; one draw of z per example);
    - ``log_likelihood``: mean importance-weighted estimate of log p(x) per example (nats);
    - ``accuracy`` (best one-to-one matching of clusters to labels, Hungarian),
      ``many_to_one_accuracy`` (each cluster named after its majority label; reported always,
      equal to ``accuracy`` or above, and the meaningful one when K > number of classes),
      ``nmi``, ``ari``, ``n_classes``: from :func:`~pyro_gmvae.metrics.clustering_scores` on
      the examples that have a label, None when none has;
    - ``class_accuracy``: with ``classes`` (a model trained with some labels known, whose
      cluster k is class k) and labels, the fraction of examples predicted as their label, with
      no matching;
    - ``rows_without_label``: when some examples' label is missing, how many (the scores above
      are on the others).

    Randomness (the draws of z) comes from ``seed`` in a forked torch random state, so the
    caller's random state is left as it was and results are reproducible.

    Raises:
        DataError: when the data does not have the model's number of features, or lies outside
            the support of its likelihood.
    """
    x = checked_input(model, dataset)
    with forked_seed(seed, model.device):
        clusters = model.predict(x)
        elbo = elbo_per_example(model, x)
        log_px = log_likelihood(model, x, num_samples=num_samples, batch_size=batch_size)

    result: dict[str, Any] = {
        "n": len(dataset),
        "n_clusters": model.n_clusters,
        "num_samples": num_samples,
        "cluster_sizes": np.bincount(clusters, minlength=model.n_clusters).tolist(),
        "elbo": float(elbo.mean()),
        "log_likelihood": float(log_px.mean()),
        "n_classes": None,
        "accuracy": None,
        "many_to_one_accuracy": None,
        "nmi": None,
        "ari": None,
    }
    if dataset.labels is not None:
        labelled = dataset.labelled
        if labelled.any():
            result["n_classes"] = len(np.unique(dataset.labels[labelled]))
            result |= clustering_scores(dataset.labels, clusters)
            if classes:
                result["class_accuracy"] = class_accuracy(dataset.labels, clusters)
        if not labelled.all():
            result["rows_without_label"] = int((~labelled).sum())
    return result


def format_evaluation(result: dict[str, Any]) -> str:
    """:func:`evaluate`'s result as a short table for people to read."""
    rows = []
    if "run_dir" in result:
        rows.append(("run", result["run_dir"]))
    what = f"{result['n']} examples"
    if result["n_classes"] is not None:
        what += f", {result['n_classes']} classes"
    unlabelled = result.get("rows_without_label", 0)
    if unlabelled:
        what += f"; {unlabelled} without a label, left out of the scores"
    rows.append(("data", f"{result['data']} ({what})" if "data" in result else what))
    if result["accuracy"] is None:
        none = "no example has a label" if unlabelled else "the data has no labels"
        rows.append(("accuracy", f"- ({none})"))
    else:
        if "class_accuracy" in result:
            rows.append(
                ("class accuracy", f"{result['class_accuracy']:.4f}  (cluster k is class k)")
            )
        rows += [
            ("accuracy", f"{result['accuracy']:.4f}  (clusters matched one-to-one to labels)"),
            ("many-to-one", f"{result['many_to_one_accuracy']:.4f}  (cluster -> majority label)"),
            ("NMI", f"{result['nmi']:.4f}"),
            ("ARI", f"{result['ari']:.4f}"),
        ]
    rows += [
        ("ELBO", f"{result['elbo']:.3f} nats per example"),
        (
            "log p(x)",
            f"{result['log_likelihood']:.3f} nats per example "
            f"(importance sampling, {result['num_samples']} samples of z)",
        ),
        ("cluster sizes", " ".join(str(c) for c in result["cluster_sizes"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
