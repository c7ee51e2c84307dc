"""Posterior predictive checks: does data replicated from the fitted model look like the data?

A check compares a test statistic ``T`` of the observed data with its distribution over data sets
replicated from the model (Gelman, Meng & Stern 1996):

- **posterior predictive**: for each observed x, ``z ~ q(z|x)`` through the guide, then
  ``x_rep ~ p(x|z)``; what the model makes of the data it has seen;
- **prior predictive**: ``y ~ Cat(pi)``, ``z ~ p(z|y)``, ``x_rep ~ p(x|z)``, a data set of the same
  size generated from scratch; what the model believes data look like.

Both are drawn by Pyro's :class:`~pyro.infer.Predictive` (see :func:`replicate`). Every p-value is
**two-sided**: ``p = min(1, 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)))`` over the replicates, so
a small p-value flags an observed value in either tail, and a well-fitting model gives values
spread over (0, 1] (posterior predictive p-values concentrate around 0.5, as the data helped fit
the model). With S replicates the smallest nonzero p-value is 2/S.

The checks (:func:`posterior_predictive_checks`):

- mean intensity per image (mean value per example for tables): per example, and its average and
  spread over the data set;
- per-pixel (per-feature) means and variances over the data set, summarised by the fraction of
  features whose p-value is below ``alpha``;
- cluster proportions: the fraction of the data the model assigns to each cluster
  (:meth:`GMVAE.predict`) against the counts of y in prior replicates (multinomial draws from pi);
- log-likelihood of held-out data against random splits of training and held-out data pooled
  (an overfitting check, as a permutation test);
- distance from generated examples to their nearest training example against that of real
  examples, held out or (without held-out data) training ones to their nearest other one (a
  memorisation check).

A flagged statistic comes with a verdict and one sentence on what the misfit means and what to
try (:meth:`Statistic.meaning`); the memorisation check's two tails have verdicts of their own,
MEMORISATION (samples closer to the training data than real data are) and OFF THE DATA (farther).

:func:`pyro_gmvae.runs.write_ppc_report` writes a report, ``report.md``, ``ppc.json`` and the figures,
into a directory; this module draws no figures and writes no files.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from .dataset import Dataset
from .evaluate import checked_input, log_likelihood
from .model import GMVAE
from .rng import forked_seed

#: the files of a report directory (:func:`pyro_gmvae.runs.write_ppc_report`)
REPORT_FILE = "report.md"
PPC_FILE = "ppc.json"

#: a p-value below this is "extreme"
ALPHA = 0.05
#: a per-feature statistic is flagged when more than this fraction of its features is extreme
FLAG_FRACTION = 0.1

# Values drawn per chunk of examples (S x n x D floats): bounds memory whatever the data size.
_CHUNK_VALUES = 1 << 22


# ----------------------------------------------------------------------------------- replication
@torch.no_grad()
def replicate(model: GMVAE, x: torch.Tensor, num_samples: int, *, prior: bool = False):
    """Replicated data: ``num_samples`` draws of ``(y, z, x)`` for each row of ``x``.

    Args:
        model: a fitted GMVAE.
        x: observed data ``(N, D)`` on the model's device.
        num_samples: S, the number of replicated data sets.
        prior: draw from the prior predictive (``x`` then only sets N) instead of the posterior
            predictive given ``x``.

    Returns:
        ``{"y": (S, N) int64, "z": (S, N, Z), "x": (S, N, D)}``.
    """
    # The model observes x (obs=x), so Predictive would return the data itself at the x site;
    # uncondition makes it a draw from p(x|z) while x still sets the plate size N.
    replicated_model = poutine.uncondition(model.model)
    predictive = Predictive(
        replicated_model,
        guide=None if prior else model.guide,
        num_samples=num_samples,
        return_sites=("y", "z", "x"),
        parallel=True,
    )
    samples = predictive(x)
    if not prior and model.config.guide == "marginal":
        # Predictive runs the model without enumeration, so the model's y above was drawn from
        # p(y), ignoring z. x depends on y only through z, so x_rep is exact; y is redrawn from
        # the exact p(y|z) (Bayes' rule over the K clusters, as predict does). infer_discrete
        # computes the same conditional but must sit inside the conditioning on z, which
        # Predictive applies outside the model it is given.
        z = samples["z"]
        log_post = model.cluster_log_posterior_given_z(z.reshape(-1, z.shape[-1]))
        samples["y"] = torch.distributions.Categorical(logits=log_post).sample().view(z.shape[:-1])
    return samples


# ------------------------------------------------------------------------------------ statistics
def two_sided_p_values(observed: np.ndarray, replicated: np.ndarray) -> np.ndarray:
    """Two-sided posterior predictive p-values, ``observed (F,)``, ``replicated (R, F) -> (F,)``.

    ``min(1, 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)))``; ties count on both sides, so a
    statistic the replicates reproduce exactly (e.g. an always-blank pixel) gets p = 1.
    """
    observed = np.asarray(observed, dtype=np.float64)
    replicated = np.asarray(replicated, dtype=np.float64)
    if replicated.ndim != 2 or observed.shape != replicated.shape[1:]:
        raise ValueError(
            f"replicated {replicated.shape} must be (R, F) for observed {observed.shape} of (F,)"
        )
    above = (replicated >= observed).mean(0)
    below = (replicated <= observed).mean(0)
    return np.minimum(1.0, 2.0 * np.minimum(above, below))


@dataclass
class Statistic:
    """One test statistic: its observed value, replicated distribution and p-values.

    Attributes:
        name: identifier, e.g. ``"feature_mean"``.
        title: what it is, in words.
        predictive: where the replicates come from: ``"posterior"``, ``"prior"``, or
            ``"permutation"`` (random splits of training and held-out data pooled).
        observed: ``(F,)`` the statistic on the data, one value per component (F = 1: a scalar).
        replicated: ``(R, F)`` the statistic on R replicates.
        p_values: ``(F,)`` two-sided p-values (:func:`two_sided_p_values`).
        component: what one of the F components is (``"pixel"``, ``"cluster"``, ...).
        image_shape: ``(H, W)`` when the F components are the pixels of an image.
        details: named arrays for figures (e.g. per-example values behind a scalar summary).
        detail_names: what each array of ``details`` holds, in words, for legends.
        detail_label: what one value of those arrays is, for axis labels.
        value_label: what one value of the statistic is, for axis labels (default: the title).
        label: a short name for narrow tables (default: the title).
        verdicts: the verdict for each direction of a misfit, where its two tails mean different
            things (default ``"MISFIT (direction)"``).
        meanings: for each direction of a misfit (``"below"``, ``"above"``, ``"both"``), what
            it means and what to try, one sentence; ``{size}`` in it becomes :meth:`size`.
    """

    name: str
    title: str
    predictive: str
    observed: np.ndarray
    replicated: np.ndarray
    p_values: np.ndarray
    component: str = "value"
    image_shape: tuple[int, int] | None = None
    details: dict[str, np.ndarray] = field(default_factory=dict)
    detail_names: dict[str, str] = field(default_factory=dict)
    detail_label: str = "value per example"
    value_label: str = ""
    label: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)
    meanings: dict[str, str] = field(default_factory=dict)

    @property
    def short_title(self) -> str:
        """``label``, or the title when that is empty."""
        return self.label or self.title

    @property
    def axis_label(self) -> str:
        """What one value is: ``value_label``, or the title when that is empty."""
        return self.value_label or self.title

    @property
    def n_components(self) -> int:
        return int(self.observed.shape[0])

    @property
    def is_scalar(self) -> bool:
        return self.n_components == 1

    @property
    def p_value(self) -> float | None:
        """The p-value of a scalar statistic; None for per-feature ones."""
        return float(self.p_values[0]) if self.is_scalar else None

    def extreme_fraction(self, alpha: float = ALPHA) -> float:
        """Fraction of components with a p-value below ``alpha``."""
        return float((self.p_values < alpha).mean())

    @property
    def flagged(self) -> bool:
        """A misfit: p < ALPHA for a scalar, more than FLAG_FRACTION extreme components otherwise."""
        if self.is_scalar:
            return self.p_values[0] < ALPHA
        return self.extreme_fraction() > FLAG_FRACTION

    def direction(self) -> str:
        """Where the extreme observed values sit: ``"below"`` or ``"above"`` the replicates,
        ``"both"`` when in both tails alike, ``"within"`` when not flagged."""
        if not self.flagged:
            return "within"
        centre = np.median(self.replicated, axis=0)
        extreme = self.p_values < ALPHA
        low = int((extreme & (self.observed < centre)).sum())
        high = int((extreme & (self.observed > centre)).sum())
        if low > 2 * high:
            return "below"
        if high > 2 * low:
            return "above"
        return "both"

    @property
    def verdict(self) -> str:
        """``"ok"``, or the misfit's verdict: ``"MISFIT (below)"`` and so on, or this check's own
        word for that direction (``verdicts``; e.g. memorisation is one tail only)."""
        if not self.flagged:
            return "ok"
        direction = self.direction()
        return self.verdicts.get(direction, f"MISFIT ({direction})")

    def size(self) -> str:
        """How large the discrepancy is, in words: the observed value against the replicates'
        median, or the share of components with p < ALPHA."""
        if self.is_scalar:
            median = float(np.median(self.replicated[:, 0]))
            return f"observed {self.observed[0]:.4g}, replicated median {median:.4g}"
        return (
            f"{100 * self.extreme_fraction():.0f}% of {self.n_components} {self.component}s with "
            f"p < {ALPHA}"
        )

    def meaning(self) -> str | None:
        """What a misfit means and what to try, one sentence; None when there is no misfit."""
        if not self.flagged:
            return None
        direction = self.direction()
        text = self.meanings.get(direction) or (
            f"the observed values lie {direction} the replicates ({{size}}): the model does not "
            "reproduce this statistic"
        )
        return text.format(size=self.size())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: replicates as mean, sd and the 2.5% and 97.5% quantiles."""
        lo, hi = np.quantile(self.replicated, [0.025, 0.975], axis=0)
        return {
            "name": self.name,
            "title": self.title,
            "predictive": self.predictive,
            "observed": self.observed.tolist(),
            "replicated_mean": self.replicated.mean(0).tolist(),
            "replicated_sd": self.replicated.std(0).tolist(),
            "replicated_q025": lo.tolist(),
            "replicated_q975": hi.tolist(),
            "n_replicates": int(self.replicated.shape[0]),
            "p_values": self.p_values.tolist(),
            "p_value": self.p_value,
            "extreme_fraction": self.extreme_fraction(),
            "flagged": bool(self.flagged),
            "direction": self.direction(),
            "verdict": self.verdict,
            "meaning": self.meaning(),
        }


def _statistic(name, title, predictive, observed, replicated, **kwargs) -> Statistic:
    observed = np.atleast_1d(np.asarray(observed, dtype=np.float64))
    replicated = np.asarray(replicated, dtype=np.float64).reshape(-1, observed.shape[0])
    return Statistic(
        name,
        title,
        predictive,
        observed,
        replicated,
        two_sided_p_values(observed, replicated),
        **kwargs,
    )


@dataclass
class PPCReport:
    """The checks of one model on one data set.

    Attributes:
        statistics: the test statistics, in the order they were computed.
        data: the data's name; ``n``: its number of examples; ``n_heldout``: held-out examples
            (0 when none were given).
        num_samples: replicated data sets drawn per predictive.
        seed: the random seed.
        notes: checks that were skipped and why.
    """

    statistics: list[Statistic]
    data: str
    n: int
    n_heldout: int
    num_samples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str | tuple[str, str]) -> Statistic:
        """The statistic called ``name`` (the first one) or ``(name, predictive)``."""
        for s in self.statistics:
            if key == s.name or key == (s.name, s.predictive):
                return s
        raise KeyError(key)

    def flagged(self) -> list[Statistic]:
        return [s for s in self.statistics if s.flagged]

    def rows(self, short: bool = False) -> list[list[str]]:
        """Table rows: statistic, predictive, observed, replicated, p-value, verdict; ``short``:
        short names, and the interval's bounds to three digits, for the terminal."""
        rows = []
        for s in self.statistics:
            if s.is_scalar:
                lo, hi = np.quantile(s.replicated[:, 0], [0.025, 0.975])
                bound = ".3g" if short else ".4g"
                observed = f"{s.observed[0]:.4g}"
                replicated = f"{s.replicated[:, 0].mean():.4g} [{lo:{bound}}, {hi:{bound}}]"
                p = f"{s.p_value:.3f}"
            else:
                observed = f"{s.n_components} {s.component}s"
                replicated = f"{s.replicated.shape[0]} replicates"
                p = f"{100 * s.extreme_fraction():.1f}% < {ALPHA}"
            title = s.short_title if short else s.title
            rows.append([title, s.predictive, observed, replicated, p, s.verdict])
        return rows

    _HEADER = ["statistic", "replicates", "observed", "replicated mean [95%]", "p-value", "verdict"]
    #: what each kind of replicate is, in the table's section headings
    _PREDICTIVES = {
        "posterior": "posterior predictive: replicated from each example's own code",
        "prior": "prior predictive: generated from scratch",
        "permutation": "permutation: random splits of training and held-out examples pooled",
    }
    _MISFITS = (
        "A misfit names an aspect of the data that the model does not reproduce; it is no verdict "
        "on the clustering. With thousands of examples the checks see small discrepancies: weigh "
        "each by its size. For clustering the posterior checks and the cluster proportions matter "
        "most; for generating data, the prior checks."
    )

    def misfits(self) -> list[tuple[Statistic, str]]:
        """Each flagged statistic with what its misfit means and what to try."""
        return [(s, s.meaning()) for s in self.statistics if s.flagged]

    def to_table(self, width: int = 100) -> str:
        """A fixed-width table for the terminal, its rows grouped by the kind of replicate, then
        one sentence per misfit and the notes, wrapped to ``width`` columns. The table's short
        names and numbers keep it within 100 columns."""
        header = ["check", "observed", "replicated mean [95%]", "p-value", "verdict"]
        rows = [[r[0], *r[2:]] for r in self.rows(short=True)]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        widths[0] += 2  # rows are indented under their section heading

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        def wrap(text: str) -> list[str]:  # flags such as --heldout-fraction stay whole
            return textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)

        lines = [line(header), line(["-" * w for w in widths])]
        for section in dict.fromkeys(s.predictive for s in self.statistics):
            lines.append(self._PREDICTIVES.get(section, section))
            lines += [
                line(["  " + row[0], *row[1:]])
                for s, row in zip(self.statistics, rows, strict=True)
                if s.predictive == section
            ]
        misfits = self.misfits()
        if misfits:
            lines += ["", *textwrap.wrap(self._MISFITS, width)]
            for s, meaning in misfits:
                lines += wrap(f"- {s.short_title} ({s.predictive}): {meaning}.")
        for note in self.notes:
            lines += wrap(f"note: {note}")
        return "\n".join(lines)

    def to_markdown(self, figures: dict[str, str] | None = None) -> str:
        """The report as Markdown; ``figures`` maps statistic keys (``name/predictive``) to
        relative image paths to embed."""
        held_out = f"{self.n_heldout} held out" if self.n_heldout else "none held out"
        out = [
            f"# Posterior predictive checks: {self.data}",
            "",
            f"{self.n} examples checked, {held_out}; {self.num_samples} replicated data "
            f"sets per predictive; seed {self.seed}.",
            "",
            "p-values are two-sided, `min(1, 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)))`: small "
            f"values (< {ALPHA}) mean the model does not reproduce the statistic. For per-feature "
            f"statistics the table gives the fraction of features with p < {ALPHA}; more than "
            f"{FLAG_FRACTION:.0%} is flagged. *posterior*: replicated given each observed example "
            "through the guide; *prior*: generated from scratch; *permutation*: random splits of the "
            "training and held-out data pooled.",
            "",
            "| " + " | ".join(self._HEADER) + " |",
            "|" + "---|" * len(self._HEADER),
            *("| " + " | ".join(r) + " |" for r in self.rows()),
            "",
        ]
        misfits = self.misfits()
        if misfits:
            out += ["## What the misfits mean", "", self._MISFITS, ""]
            out += [f"- **{s.title}** ({s.predictive}): {meaning}." for s, meaning in misfits]
            out += [""]
        out += [f"- {n}" for n in self.notes]
        for s in self.statistics:
            key = f"{s.name}/{s.predictive}"
            if figures and key in figures:
                out += ["", f"## {s.title} ({s.predictive})", "", f"![{key}]({figures[key]})"]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "n": self.n,
            "n_heldout": self.n_heldout,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "alpha": ALPHA,
            "flag_fraction": FLAG_FRACTION,
            "notes": self.notes,
            "statistics": [s.to_dict() for s in self.statistics],
        }


# --------------------------------------------------------------------------------------- checks
def _predictive_statistics(
    model: GMVAE, x: torch.Tensor, num_samples: int, prior: bool, progress: bool
) -> dict[str, np.ndarray]:
    """Replicate in chunks of examples and reduce each replicate to its statistics as it comes,
    so S x N x D values never sit in memory at once.

    Returns per-example means ``(S, N)``, per-feature sums and sums of squares ``(S, D)`` and
    cluster counts ``(S, K)``.
    """
    n, d = x.shape
    S, K = num_samples, model.n_clusters
    chunk = max(1, _CHUNK_VALUES // (S * d))
    example_means = []
    sums = np.zeros((S, d))
    squares = np.zeros((S, d))
    counts = np.zeros((S, K))
    label = "prior predictive" if prior else "posterior predictive"
    for xb in tqdm(x.split(chunk), desc=label, disable=not progress, leave=False):
        rep = replicate(model, xb, S, prior=prior)
        xr = rep["x"].double()  # (S, n, D)
        example_means.append(xr.mean(-1).cpu().numpy())
        sums += xr.sum(1).cpu().numpy()
        squares += (xr**2).sum(1).cpu().numpy()
        y = rep["y"] + K * torch.arange(S, device=rep["y"].device).unsqueeze(-1)  # (S, n)
        counts += torch.bincount(y.reshape(-1), minlength=S * K).view(S, K).cpu().numpy()
    means = sums / n
    return {
        "example_means": np.concatenate(example_means, axis=1),
        "feature_means": means,
        "feature_variances": np.maximum(squares / n - means**2, 0.0),
        "cluster_proportions": counts / n,
    }


def _nearest_distances(reference: np.ndarray, queries: np.ndarray, leave_one_out=False):
    """Euclidean distance from each query row to its nearest reference row ``(M,)``; with
    ``leave_one_out`` the queries are reference rows, and their own row does not count."""
    nn = NearestNeighbors(n_neighbors=2 if leave_one_out else 1).fit(reference)
    distances, _ = nn.kneighbors(queries)
    return distances[:, -1]


def posterior_predictive_checks(
    model: GMVAE,
    dataset: Dataset,
    *,
    heldout: Dataset | None = None,
    num_samples: int = 100,
    seed: int = 0,
    loglik_samples: int = 16,
    max_examples: int | None = 2000,
    progress: bool = False,
) -> PPCReport:
    """Check whether ``model`` reproduces ``dataset`` (the data it was fitted to).

    Args:
        model: a fitted GMVAE.
        dataset: its training data (images in [0, 1], tables standardized as for training).
        heldout: data of the same kind the model never saw; enables the log-likelihood check and
            serves as the real examples of the memorisation check (otherwise each training
            example's distance to its nearest *other* training example is used).
        num_samples: S, replicated data sets per predictive (p-values resolve to 2/S).
        seed: seeds every draw; the caller's random state is left as it was.
        loglik_samples: importance samples per example for log p(x)
            (:func:`~pyro_gmvae.evaluate.log_likelihood`).
        max_examples: check a random subset of this many training (and held-out) examples, to
            bound the cost (S replicates of each); None: all. Nearest training examples are
            still searched among all of them.
        progress: show progress bars.

    Returns:
        A :class:`PPCReport`.

    Raises:
        DataError: data that do not have the model's features or lie outside its likelihood's
            support.
        ValueError: ``num_samples < 2``, ``loglik_samples < 1`` or ``max_examples < 1``.
    """
    if num_samples < 2:
        raise ValueError(
            f"num_samples must be at least 2 to give a distribution, not {num_samples}"
        )
    if loglik_samples < 1:
        raise ValueError(f"loglik_samples must be at least 1, not {loglik_samples}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1 (or None), not {max_examples}")
    # The checks compare statistics of whole data sets: data read from disk is copied here.
    all_x = model.as_tensor(checked_input(model, dataset))
    x_heldout = None if heldout is None else model.as_tensor(checked_input(model, heldout))
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    x = _subset(all_x, max_examples, rng, "training", notes)
    if x_heldout is not None:
        x_heldout = _subset(x_heldout, max_examples, rng, "held-out", notes)
    image_shape = model.config.image_shape
    per_example = "mean intensity per image" if image_shape else "mean value per example"
    unit = "image" if image_shape else "example"
    feature = "pixel" if image_shape else "feature"
    x_np = x.double().cpu().numpy()
    observed = {
        "example_means": x_np.mean(1),
        "feature_means": x_np.mean(0),
        "feature_variances": x_np.var(0),
        "cluster_proportions": np.bincount(model.predict(x), minlength=model.n_clusters) / len(x),
    }
    stats: list[Statistic] = []
    was_training = model.training
    model.eval()
    try:
        with forked_seed(seed, model.device):
            for predictive in ("posterior", "prior"):
                rep = _predictive_statistics(
                    model, x, num_samples, prior=predictive == "prior", progress=progress
                )
                obs_means, rep_means = observed["example_means"], rep["example_means"]
                stats += [
                    _statistic(
                        "intensity_mean",
                        f"{per_example}: average over examples",
                        predictive,
                        obs_means.mean(),
                        rep_means.mean(1),
                        details={"observed": obs_means, "replicated": rep_means.reshape(-1)},
                        detail_names={
                            "observed": f"observed {unit}s",
                            "replicated": f"replicated {unit}s",
                        },
                        value_label=f"{per_example}, averaged over the {unit}s",
                        detail_label=per_example,
                    ),
                    _statistic(
                        "intensity_sd",
                        f"{per_example}: sd over examples",
                        predictive,
                        obs_means.std(),
                        rep_means.std(1),
                        value_label=f"standard deviation over the {unit}s of their {per_example}",
                    ),
                ]
                if predictive == "posterior":  # only the posterior pairs replicates with examples
                    stats.append(
                        _statistic(
                            "intensity",
                            per_example,
                            predictive,
                            obs_means,
                            rep_means,
                            component="example",
                            value_label="mean intensity" if image_shape else "mean value",
                        )
                    )
                for name, what in (("feature_means", "mean"), ("feature_variances", "variance")):
                    stats.append(
                        _statistic(
                            name.removesuffix("s"),
                            f"per-{feature} {what}",
                            predictive,
                            observed[name],
                            rep[name],
                            component=feature,
                            image_shape=image_shape,
                        )
                    )
                if predictive == "prior":
                    stats.append(
                        _statistic(
                            "cluster_proportions",
                            "cluster proportions (assigned vs drawn from pi)",
                            predictive,
                            observed["cluster_proportions"],
                            rep["cluster_proportions"],
                            component="cluster",
                            details={"pi": model.mixture_weights()},
                            value_label="fraction of the examples",
                        )
                    )
            if x_heldout is None:
                notes.append(
                    "no held-out data: the log-likelihood check was skipped (give held-out data, "
                    "e.g. --heldout-fraction, to run it)"
                )
            else:
                stats.append(_loglik_check(model, x, x_heldout, loglik_samples, num_samples, rng))
            stats.append(
                _memorisation_check(
                    model, all_x.double().cpu().numpy(), x_np, x_heldout, num_samples, rng
                )
            )
    finally:
        model.train(was_training)
    facts = _Facts(
        images=image_shape is not None,
        likelihood=getattr(model.likelihood, "label", type(model.likelihood).__name__),
        grey_levels=bool(((x_np > 0) & (x_np < 1)).any()),
        latent_dim=model.config.latent_dim,
        clusters=model.n_clusters,
        learn_weights=model.config.learn_weights,
        heldout=x_heldout is not None,
    )
    for stat in stats:
        _explain(stat, facts)
    return PPCReport(
        statistics=stats,
        data=dataset.name,
        n=len(x),
        n_heldout=0 if x_heldout is None else len(x_heldout),
        num_samples=num_samples,
        seed=seed,
        notes=notes,
    )


def _subset(
    x: torch.Tensor, max_examples: int | None, rng: np.random.Generator, what: str, notes
) -> torch.Tensor:
    if max_examples is None or len(x) <= max_examples:
        return x
    notes.append(f"checked a random {max_examples} of the {len(x)} {what} examples")
    keep = np.sort(rng.choice(len(x), max_examples, replace=False))
    return x[torch.as_tensor(keep, device=x.device)]


def _loglik_check(
    model: GMVAE,
    x: torch.Tensor,
    x_heldout: torch.Tensor,
    loglik_samples: int,
    num_samples: int,
    rng: np.random.Generator,
) -> Statistic:
    """Mean log p(x) of the held-out examples against the means of random subsets of the same size
    drawn from training and held-out examples pooled (a permutation test): if the model
    generalises, the held-out examples are as likely as any others; an overfitting model scores
    its training data higher than new data."""
    train_ll = log_likelihood(model, x, num_samples=loglik_samples).double().cpu().numpy()
    heldout_ll = log_likelihood(model, x_heldout, num_samples=loglik_samples).double().cpu().numpy()
    pooled = np.concatenate([train_ll, heldout_ll])
    m = len(heldout_ll)
    permuted = [
        pooled[rng.permutation(len(pooled))[:m]].mean() for _ in range(max(num_samples, 1000))
    ]
    return _statistic(
        "loglik",
        "log-likelihood per example, held-out vs training",
        "permutation",
        heldout_ll.mean(),
        permuted,
        details={"training": train_ll, "heldout": heldout_ll},
        detail_names={"training": "training examples", "heldout": "held-out examples"},
        value_label="mean log p(x) of the held-out examples (nats)",
        detail_label="log p(x) of one example (nats)",
    )


def _memorisation_check(
    model: GMVAE,
    x_all: np.ndarray,
    x_np: np.ndarray,
    x_heldout: torch.Tensor | None,
    num_samples: int,
    rng: np.random.Generator,
) -> Statistic:
    """Median distance to the nearest training example (among all of ``x_all``) of a set of real
    examples the search does not count, against that of sets of the same size generated by the
    model (prior predictive draws, not the likelihood's mean: a mean lacks the observation noise
    that real data has, and would sit closer to the training set than any real example). Generated
    sets much closer than real ones suggest memorised training examples; much farther, samples
    unlike the data. The real examples are held-out ones when given; otherwise training examples
    (``x_np``), each to its nearest *other* training example."""
    n_real = len(x_np) if x_heldout is None else len(x_heldout)
    # Sets of g examples, R of them, at most ~5000 generated examples in all to bound the cost.
    g = max(1, min(n_real, 500, max(20, 5000 // num_samples)))
    generated, _ = model.sample(g * num_samples, mean=False)
    d_generated = _nearest_distances(x_all, generated.astype(np.float64))
    pick = rng.choice(n_real, g, replace=False)
    if x_heldout is None:
        d_real = _nearest_distances(x_all, x_np[pick], leave_one_out=True)
        real = "training examples (each to its nearest other one)"
    else:
        d_real = _nearest_distances(x_all, x_heldout.double().cpu().numpy()[pick])
        real = "held-out examples"
    return _statistic(
        "nearest_training_distance",
        f"median distance to the nearest training example, {real} vs generated",
        "prior",
        np.median(d_real),
        np.median(d_generated.reshape(num_samples, g), axis=1),
        details={"real": d_real, "generated": d_generated},
        detail_names={"real": real, "generated": "generated examples"},
        value_label="median distance to the nearest training example",
        detail_label="distance of one example to its nearest training example",
    )


# ------------------------------------------------------------------------- what a misfit means
@dataclass
class _Facts:
    """What the advice on a misfit depends on: the kind of data and the model's settings."""

    images: bool
    likelihood: str  # the likelihood's label, e.g. "bernoulli"
    grey_levels: bool  # values strictly between 0 and 1
    latent_dim: int
    clusters: int
    learn_weights: bool
    heldout: bool

    @property
    def unit(self) -> str:
        return "image" if self.images else "example"

    @property
    def pixel(self) -> str:
        return "pixel" if self.images else "feature"

    def noise(self) -> str:
        """What to try when replicates vary more (or less) than the data: the likelihood."""
        if self.likelihood == "bernoulli" and self.grey_levels:
            return (
                "Bernoulli draws are black or white where the data are grey: try --likelihood "
                "continuous_bernoulli, or binarise the data"
            )
        if self.likelihood == "bernoulli":
            return (
                f"for binary data a {self.pixel}'s variance follows from its mean, so see the "
                f"per-{self.pixel} mean; train longer"
            )
        if self.likelihood == "gaussian":
            return "the Gaussian's learned scale does not match the data's spread; train longer"
        return f"the {self.likelihood} likelihood's noise does not match the data's; try another"

    def weights(self) -> str:
        return "" if self.learn_weights else ", or learn the weights pi (--learn-weights)"


def _explain(stat: Statistic, f: _Facts) -> None:
    """Give ``stat`` its short name, and its sentences on what a misfit in each direction means
    and what to try (``{size}`` stands for the discrepancy's size)."""
    u, px = f.unit, f.pixel
    # (images, tables): how much ink an image holds is what a table's example's mean value is
    more, less = ("more ink", "less ink") if f.images else ("higher values", "lower values")
    amount = "amount of ink" if f.images else "mean value"
    codes = f"more latent dimensions (--latent-dim, now {f.latent_dim})"
    prior_mass = f"the mixture prior p(z) puts mass where the codes of real {u}s do not lie"
    key = (stat.name, stat.predictive)
    if stat.name == "intensity_mean":
        stat.label = f"mean {'intensity' if f.images else 'value'}: average"
        if stat.predictive == "posterior":
            stat.meanings = {
                d: f"the data have {than} on average than their own replicates ({{size}}): the "
                "reconstructions are biased; train longer, or give the decoder more capacity "
                "(--hidden)"
                for d, than in (("below", less), ("above", more))
            }
        else:
            stat.meanings = {
                d: f"{u}s generated from scratch have {than} than the data ({{size}}): "
                f"{prior_mass}; train longer{f.weights()}"
                for d, than in (("below", more), ("above", less))
            }
    elif stat.name == "intensity_sd":
        stat.label = f"mean {'intensity' if f.images else 'value'}: sd"
        more_clusters = "" if stat.predictive == "posterior" else f" or clusters ({f.clusters} now)"
        stat.meanings = {
            "above": f"the data vary more from {u} to {u} in their {amount} than the replicates "
            f"({{size}}): the model makes {u}s too alike; try {codes}{more_clusters}",
            "below": f"the replicates vary more in their {amount} than the data ({{size}}): the "
            f"likelihood adds noise the data do not have; {f.noise()}",
        }
    elif stat.name == "intensity":
        stat.label = "intensity per image" if f.images else "mean per example"
        lost = f"their codes lose their {amount}; try {codes}, or train longer"
        stat.meanings = {
            "below": f"{{size}}, most with {less} than their replicates: {lost}",
            "above": f"{{size}}, most with {more} than their replicates: {lost}",
            "both": f"{{size}}, at both ends (the lowest and the highest {amount}): {lost}",
        }
    elif key == ("feature_mean", "posterior"):
        stat.label = f"per-{px} mean"
        what = "where the ink is" if f.images else "the features' means"
        fix = f"the decoder does not reproduce {what}; train longer, or try {codes}"
        stat.meanings = {
            "below": f"{{size}}, the replicates having {more} there than the data: {fix}",
            "above": f"{{size}}, the replicates having {less} there than the data: {fix}",
            "both": f"{{size}}, the replicates having {more} on some, {less} on others: {fix}",
        }
    elif key == ("feature_mean", "prior"):
        stat.label = f"per-{px} mean"
        unlike = "put their ink elsewhere than the data do" if f.images else "have other means"
        text = (
            f"{{size}}: {u}s generated from scratch {unlike}, as {prior_mass}; train "
            f"longer{f.weights()}, or try more clusters ({f.clusters} now)"
        )
        stat.meanings = dict.fromkeys(("below", "above", "both"), text)
    elif stat.name == "feature_variance":
        stat.label = f"per-{px} variance"
        stat.meanings = {
            "below": f"{{size}}, the data varying less than the replicates: {f.noise()}",
            "above": f"{{size}}, the data varying more than the replicates: the model is too "
            f"smooth (blurry {u}s); try {codes}, or train longer",
            "both": f"{{size}}, the data varying more on some, less on others: the likelihood's "
            f"noise does not match the data's; {f.noise()}",
        }
    elif stat.name == "cluster_proportions":
        stat.label = "cluster proportions"
        if f.learn_weights:
            why = "the learned weights lag behind the clusters the encoder uses; train longer"
        else:
            why = (
                "with fixed uniform weights this is expected when the data's groups differ in "
                "size, and the clusters may still be right; --learn-weights lets pi follow them"
            )
        unused = (
            f"; clusters far below their weight are hardly used: fewer may do ({f.clusters} now)"
        )
        text = f"{{size}}: the data fall into the clusters in proportions unlike pi; {why}"
        stat.meanings = {"below": text + unused, "above": text, "both": text + unused}
    elif stat.name == "loglik":
        stat.label = "held-out log p(x)"
        stat.meanings = {
            "below": f"held-out {u}s are less likely than training ones ({{size}}; nats per {u}): "
            "the model fits its training data better than new data (overfitting), or the "
            "held-out data differ from the training data; try fewer epochs, augmentation or a "
            "smaller network",
            "above": f"held-out {u}s are more likely than training ones ({{size}}): no sign of "
            "overfitting; the held-out part happens to be easier than the training part",
        }
    elif stat.name == "nearest_training_distance":
        stat.label = "distance to training"
        real = (
            f"held-out {u}s do" if f.heldout else f"training {u}s lie from their nearest other one"
        )
        black_white = f.likelihood == "bernoulli" and f.grey_levels
        samples_off = " (here Bernoulli draws, black or white, of grey data)" if black_white else ""

        stat.verdicts = {"above": "MEMORISATION", "below": "OFF THE DATA"}
        stat.meanings = {
            "above": f"generated {u}s lie closer to training {u}s than {real} ({{size}}): the "
            f"model may be reproducing training {u}s (memorisation); try fewer epochs, more data "
            "or a smaller decoder",
            "below": f"generated {u}s lie farther from every training {u} than {real} "
            f"({{size}}): the samples are noisy or blurry, not copies, so this is no sign of "
            f"memorisation; the prior predictive checks say how the samples differ{samples_off}",
        }
