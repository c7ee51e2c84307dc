"""Figures: what a fitted GMVAE learned, and whether it reproduces the data.

Every function ``*_figure`` returns a matplotlib :class:`~matplotlib.figure.Figure` (which a notebook
shows inline) built without pyplot, so no global figure state is left behind and nothing needs
closing; :func:`save_figure` writes one as a PNG, atomically. Images are shown as grey images,
tables as per-feature profiles (feature index on the x axis, standardized value on the y axis).

- :func:`training_figures`: everything ``gmvae train`` writes into ``RUN_DIR/figures``;
- :func:`ppc_figures`: the figures of a :class:`~pyro_gmvae.ppc.PPCReport`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import Dataset
from .files import atomic_write_bytes
from .metrics import match_clusters, matched_confusion
from .model import GMVAE
from .ppc import ALPHA, PPCReport, Statistic

FIGURES_DIR = "figures"
#: pixels per inch of saved figures: a figure of size (w, h) inches is (100 w, 100 h) pixels
DPI = 100
#: at most this many points in a scatter plot (a random subset beyond it)
MAX_POINTS = 5000

_PHASE_STYLE = {
    "pretrain": ("tab:grey", "pretraining: reconstruction loss"),
    "anchor": ("tab:orange", "anchor: negative ELBO given y, KL weighted"),
    "svi": ("tab:blue", "SVI: negative ELBO"),
}
_SCORES = ("accuracy", "many_to_one_accuracy", "nmi", "ari")


def _figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` inches rendered by Agg, outside pyplot: nothing global is
    touched (a notebook keeps its backend) and nothing needs closing."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG of ``figsize * DPI`` pixels, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _positive(n: int, name: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, not {n!r}")


def cluster_colours(n_clusters: int) -> np.ndarray:
    """One RGBA colour per cluster, ``(K, 4)``: distinct hues up to 20, a continuous map beyond."""
    if n_clusters <= 10:
        return colormaps["tab10"](np.arange(n_clusters))
    if n_clusters <= 20:
        return colormaps["tab20"](np.arange(n_clusters))
    return colormaps["turbo"](np.linspace(0.05, 0.95, n_clusters))


def _grey() -> Any:
    return colormaps["gray"].with_extremes(bad="white")  # NaN: the gaps between images


def image_mosaic(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """Tile ``images (R, C, H, W)`` into one ``(R*(H+pad)-pad, C*(W+pad)-pad)`` array, NaN between
    the tiles."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"images must have shape (rows, columns, H, W), not {images.shape}")
    r, c, h, w = images.shape
    out = np.full((r * (h + pad) - pad, c * (w + pad) - pad), np.nan)
    for i in range(r):
        for j in range(c):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = images[i, j]
    return out


def _as_images(x: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(x).reshape(*np.shape(x)[:-1], *image_shape)


# ------------------------------------------------------------------------------------- training
def training_curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Loss per epoch, the pretraining, anchor and SVI phases in their own colours, and the clustering
    scores per epoch when the records have them (``accuracy``, ``nmi``, ...)."""
    if not history:
        raise ValueError("history is empty: no epochs to plot (train for at least one epoch)")
    missing = [i for i, r in enumerate(history) if "loss" not in r or "epoch" not in r]
    if missing:
        raise ValueError(f"history records {missing[:5]} lack 'epoch' or 'loss'")
    scores = [k for k in _SCORES if any(k in r for r in history)]
    fig = _figure(11 if scores else 6, 4)
    axes = fig.subplots(1, 2 if scores else 1, squeeze=False)[0]
    ax = axes[0]
    for phase, (colour, label) in _PHASE_STYLE.items():
        records = [r for r in history if r.get("phase", "svi") == phase]
        if records:
            ax.plot(
                [r["epoch"] for r in records],
                [r["loss"] for r in records],
                "o-",
                color=colour,
                markersize=3,
                label=label,
            )
    boundary = [r["epoch"] for r in history if r.get("phase") == "pretrain"]
    if boundary and len(boundary) < len(history):
        ax.axvline(max(boundary) + 0.5, color="k", linestyle=":", label="mixture fitted to codes")
    ax.set(xlabel="epoch", ylabel="loss per example (nats)", title="Training loss")
    ax.legend()
    if scores:
        ax = axes[1]
        for key in scores:
            records = [r for r in history if key in r]
            ax.plot([r["epoch"] for r in records], [r[key] for r in records], "o-", ms=3, label=key)
        ax.set(xlabel="epoch", ylabel="score", ylim=(0, 1.02), title="Clustering vs labels")
        ax.legend()
    return fig


# -------------------------------------------------------------------------------------- samples
def samples_figure(
    model: GMVAE, per_cluster: int, *, dataset: Dataset | None = None, seed: int | None = None
) -> Figure:
    """Generated examples, one row (images) or one panel (tables) per cluster.

    Images: ``per_cluster`` likelihood means ``model.sample(n, cluster=k)`` per row. Tables: the
    samples' feature profiles (thin), their mean (thick) and, with ``dataset``, the mean profile
    of the data assigned to the cluster (dashed). ``seed`` fixes the draws without touching the
    caller's random state.
    """
    _positive(per_cluster, "per_cluster")
    K = model.n_clusters
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        samples = np.stack([model.sample(per_cluster, cluster=k)[0] for k in range(K)])
    weights = model.mixture_weights()
    image_shape = model.config.image_shape
    if image_shape is not None:
        h, w = image_shape
        cell = 0.55  # inches per image
        fig = _figure(1.8 + cell * per_cluster, 0.9 + cell * K * h / w)
        ax = fig.subplots()
        ax.imshow(image_mosaic(_as_images(samples, image_shape)), cmap=_grey(), vmin=0, vmax=1)
        ax.set_yticks([k * (h + 1) + h / 2 for k in range(K)])
        ax.set_yticklabels([f"cluster {k}  (pi={weights[k]:.2f})" for k in range(K)])
        ax.set_xticks([])
        ax.set_title(f"Samples per cluster (mean of p(x|z), z ~ p(z|y); {per_cluster} per row)")
        return fig

    assigned = None if dataset is None else model.predict(dataset.x)
    ncols = min(K, 4)
    nrows = -(-K // ncols)
    fig = _figure(3.2 * ncols, 2.4 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    features = np.arange(samples.shape[-1])
    colours = cluster_colours(K)
    for k, ax in enumerate(axes.flat):
        if k >= K:
            ax.set_axis_off()
            continue
        ax.plot(features, samples[k].T, color=colours[k], alpha=0.25, linewidth=0.8)
        ax.plot(features, samples[k].mean(0), color=colours[k], linewidth=2.5, label="samples")
        if assigned is not None and (assigned == k).any():
            data_mean = dataset.x[assigned == k].mean(0)
            ax.plot(features, data_mean, "k--", linewidth=1.5, label="data in cluster")
        ax.set_title(f"cluster {k} (pi={weights[k]:.2f})", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    _feature_ticks(axes[-1], dataset)
    fig.supxlabel("feature")
    fig.supylabel("standardized value")
    fig.suptitle("Samples per cluster: feature profiles")
    return fig


def _feature_ticks(axes, dataset: Dataset | None) -> None:
    names = None if dataset is None else dataset.feature_names
    if names and len(names) <= 20:
        for ax in axes:
            ax.set_xticks(np.arange(len(names)))
            ax.set_xticklabels(names, rotation=90, fontsize=7)


# ------------------------------------------------------------------------------- reconstructions
def reconstructions_figure(
    model: GMVAE, x: np.ndarray, n: int = 10, *, dataset: Dataset | None = None
) -> Figure:
    """Examples and their reconstructions ``E[x | z = encode(x)]``: originals above
    reconstructions for images, overlaid profiles for tables. ``x (N, D)``; the ``n`` examples
    shown are spread evenly over its rows."""
    _positive(n, "n")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != model.config.n_features or len(x) == 0:
        raise ValueError(
            f"x must have shape (N, {model.config.n_features}) with N >= 1, not {x.shape}"
        )
    rows = np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int))
    originals = x[rows]
    recon = model.reconstruct(originals)
    image_shape = model.config.image_shape
    if image_shape is not None:
        h, w = image_shape
        fig = _figure(1.6 + 0.6 * len(rows), 1.0 + 1.2 * h / w)
        ax = fig.subplots()
        pair = _as_images(np.stack([originals, recon]), image_shape)
        ax.imshow(image_mosaic(pair), cmap=_grey(), vmin=0, vmax=1)
        ax.set_yticks([h / 2, h + 1 + h / 2])
        ax.set_yticklabels(["original", "reconstruction"])
        ax.set_xticks([])
        ax.set_title("Reconstructions: x and E[x | z = mean of q(z|x)]")
        return fig

    ncols = min(len(rows), 5)
    nrows = -(-len(rows) // ncols)
    fig = _figure(3.0 * ncols, 2.3 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    features = np.arange(x.shape[1])
    for i, ax in enumerate(axes.flat):
        if i >= len(rows):
            ax.set_axis_off()
            continue
        ax.plot(features, originals[i], "ko", markersize=3, label="original")
        ax.plot(features, recon[i], "-", color="tab:orange", label="reconstruction")
        ax.set_title(f"example {rows[i]}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    _feature_ticks(axes[-1], dataset)
    fig.supxlabel("feature")
    fig.supylabel("standardized value")
    fig.suptitle("Reconstructions")
    return fig


# ----------------------------------------------------------------------------------- latent space
def latent_figure(
    model: GMVAE,
    x: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    label_names: list[str] | None = None,
    seed: int = 0,
) -> Figure:
    """The posterior means of z in 2-D (PCA when Z > 2), coloured by predicted cluster and, when
    ``labels (N,)`` are given, in a second panel by label. The cluster means mu_y are marked."""
    from sklearn.decomposition import PCA

    x = np.asarray(x)
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} examples")
    if len(x) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_POINTS, replace=False))
        x = x[keep]
        labels = None if labels is None else np.asarray(labels)[keep]
    codes = model.encode(x)
    clusters = model.predict(x)
    centres = model.cluster_means.detach().cpu().numpy()
    Z = codes.shape[1]
    if Z > 2:
        pca = PCA(2, random_state=seed).fit(codes)
        codes, centres = pca.transform(codes), pca.transform(centres)
        explained = pca.explained_variance_ratio_
        axis_labels = [f"PC{i + 1} of z ({100 * explained[i]:.0f}% of variance)" for i in (0, 1)]
    elif Z == 2:
        axis_labels = ["z1", "z2"]
    else:  # one dimension: spread the points vertically at random so they can be seen
        jitter = np.random.default_rng(seed).uniform(-1, 1, size=(len(codes), 1))
        codes = np.hstack([codes, jitter])
        centres = np.hstack([centres, np.zeros((len(centres), 1))])
        axis_labels = ["z", "(random jitter)"]

    fig = _figure(12 if labels is not None else 6.5, 5.5)
    axes = fig.subplots(1, 2 if labels is not None else 1, squeeze=False)[0]
    K = model.n_clusters
    _scatter_by_group(
        axes[0], codes, clusters, cluster_colours(K), [f"cluster {k}" for k in range(K)]
    )
    axes[0].scatter(*centres.T, marker="X", s=50, c="k", edgecolors="w", label="cluster means")
    axes[0].set_title("Latent codes by predicted cluster")
    if labels is not None:
        labels = np.asarray(labels)
        values = np.unique(labels)
        names = [str(label_names[v]) if label_names is not None else f"label {v}" for v in values]
        codes_of = np.searchsorted(values, labels)
        _scatter_by_group(axes[1], codes, codes_of, cluster_colours(len(values)), names)
        axes[1].set_title("Latent codes by label")
    for ax in axes:
        ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1])
        ax.legend(fontsize=7, markerscale=2, loc="best", ncols=2 if K > 10 else 1)
    return fig


def _scatter_by_group(ax, points, groups, colours, names) -> None:
    for g, name in enumerate(names):
        mine = groups == g
        if mine.any():
            ax.scatter(*points[mine].T, s=4, color=colours[g], alpha=0.6, label=name)


# ----------------------------------------------------------------------------- confusion matrix
def confusion_figure(
    labels: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int | None = None,
    *,
    label_names: list[str] | None = None,
) -> Figure:
    """Counts of each label (rows) in each cluster (columns), the columns ordered by the best
    one-to-one matching of clusters to labels (:func:`matched_confusion`)."""
    M, order = matched_confusion(labels, clusters, n_clusters)
    matched = match_clusters(labels, clusters, n_clusters)  # the matching that ordered M
    accuracy = sum(M[c, order.index(k)] for k, c in matched.items()) / len(labels)
    L, K = M.shape
    fig = _figure(2.0 + 0.5 * K, 1.6 + 0.45 * L)
    ax = fig.subplots()
    image = ax.imshow(M, cmap="Blues")
    fig.colorbar(image, ax=ax, label="examples")
    if K * L <= 400:
        for i in range(L):
            for j in range(K):
                dark = M[i, j] > 0.6 * M.max()
                ax.text(
                    j, i, M[i, j], ha="center", va="center", fontsize=7, color="w" if dark else "k"
                )
    ax.set_xticks(range(K), [str(k) for k in order])
    names = label_names if label_names is not None else [str(v) for v in range(L)]
    ax.set_yticks(range(L), [str(names[v]) for v in range(L)])
    ax.set(
        xlabel="cluster (ordered by the matching)",
        ylabel="label",
        title=f"Clusters vs labels (matched accuracy {accuracy:.3f})",
    )
    return fig


# ------------------------------------------------------------------------------------ after train
def training_figures(
    model: GMVAE, dataset: Dataset, history: list[dict[str, Any]], out_dir: str | Path
) -> list[Path]:
    """The figures of a training run, written into ``out_dir/figures``; returns their paths.

    ``training_curves.png`` (when ``history`` has epochs), ``samples.png``,
    ``reconstructions.png``, ``latent.png`` and, when ``dataset`` has labels, ``confusion.png``.
    """
    figures_dir = Path(out_dir) / FIGURES_DIR
    written = []
    if history:
        written.append(
            save_figure(training_curves_figure(history), figures_dir / "training_curves.png")
        )
    per_cluster = 10 if model.config.image_shape else 20
    written += [
        save_figure(
            samples_figure(model, per_cluster, dataset=dataset, seed=0),
            figures_dir / "samples.png",
        ),
        save_figure(
            reconstructions_figure(model, dataset.x, dataset=dataset),
            figures_dir / "reconstructions.png",
        ),
        save_figure(
            latent_figure(model, dataset.x, dataset.labels, label_names=dataset.label_names),
            figures_dir / "latent.png",
        ),
    ]
    if dataset.labels is not None:
        fig = confusion_figure(
            dataset.labels,
            model.predict(dataset.x),
            model.n_clusters,
            label_names=dataset.label_names,
        )
        written.append(save_figure(fig, figures_dir / "confusion.png"))
    return written


# ------------------------------------------------------------------------------------------ PPC
def statistic_figure(stat: Statistic) -> Figure:
    """A posterior predictive check as a picture.

    Scalar statistic: the replicated distribution (histogram) and the observed value (line), with
    the distributions behind it when the statistic summarises per-example values. Per-pixel
    statistic: observed against replicated values, extreme pixels in red, and the map of
    p-values over the image. Other per-component statistics: each component's observed value
    against the replicates' 95% interval.
    """
    extra = [k for k in stat.details if k not in ("pi",)]
    if stat.is_scalar:
        fig = _figure(11 if len(extra) >= 2 else 6, 4)
        axes = fig.subplots(1, 2 if len(extra) >= 2 else 1, squeeze=False)[0]
        ax = axes[0]
        ax.hist(stat.replicated[:, 0], bins=30, color="tab:blue", alpha=0.7, label="replicated")
        ax.axvline(stat.observed[0], color="tab:red", linewidth=2, label="observed")
        ax.set(
            xlabel="statistic",
            ylabel="replicates",
            title=f"{stat.predictive}: p = {stat.p_value:.3f}",
        )
        ax.legend()
        if len(extra) >= 2:
            ax = axes[1]
            values = [stat.details[key] for key in extra[:2]]
            bins = np.histogram_bin_edges(np.concatenate(values), bins=40)
            for key, v, colour in zip(extra, values, ("tab:red", "tab:blue"), strict=False):
                ax.hist(v, bins=bins, density=True, alpha=0.5, color=colour, label=key)
            ax.set(xlabel="value per example", ylabel="density", title="Per-example values")
            ax.legend()
        fig.suptitle(stat.title, fontsize=10)
        return fig

    extreme = stat.p_values < ALPHA
    rep_median = np.median(stat.replicated, axis=0)
    lo, hi = np.quantile(stat.replicated, [0.025, 0.975], axis=0)
    if stat.image_shape is not None or stat.n_components > 50:
        image = stat.image_shape is not None
        fig = _figure(11 if image else 6, 4.6)
        axes = fig.subplots(1, 2 if image else 1, squeeze=False)[0]
        ax = axes[0]
        ax.errorbar(
            rep_median,
            stat.observed,
            xerr=[rep_median - lo, hi - rep_median],
            fmt="none",
            ecolor="0.8",
            elinewidth=0.6,
        )
        ax.scatter(
            rep_median[~extreme],
            stat.observed[~extreme],
            s=6,
            color="tab:blue",
            label=f"p >= {ALPHA}",
        )
        ax.scatter(
            rep_median[extreme], stat.observed[extreme], s=8, color="tab:red", label=f"p < {ALPHA}"
        )
        edges = [min(lo.min(), stat.observed.min()), max(hi.max(), stat.observed.max())]
        ax.plot(edges, edges, "k:", linewidth=1, label="observed = replicated")
        ax.set(
            xlabel="replicated (median, 95% interval)",
            ylabel="observed",
            title=f"{100 * extreme.mean():.1f}% of {stat.n_components} with p < {ALPHA}",
        )
        ax.legend(fontsize=8)
        if image:
            ax = axes[1]
            shown = ax.imshow(stat.p_values.reshape(stat.image_shape), cmap="magma", vmin=0, vmax=1)
            fig.colorbar(shown, ax=ax, label="p-value")
            ax.set(title="p-value per pixel (dark: not reproduced)", xticks=[], yticks=[])
        fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
        return fig

    fig = _figure(max(6, 0.45 * stat.n_components + 2), 4)
    ax = fig.subplots()
    index = np.arange(stat.n_components)
    ax.fill_between(index, lo, hi, color="tab:blue", alpha=0.25, step="mid", label="replicated 95%")
    ax.plot(index, rep_median, "_", color="tab:blue", markersize=14, label="replicated median")
    ax.scatter(
        index, stat.observed, c=np.where(extreme, "tab:red", "k"), zorder=3, label="observed"
    )
    if "pi" in stat.details:
        ax.plot(index, stat.details["pi"], "x", color="tab:green", label="pi")
    ax.set(xlabel=stat.component, ylabel="statistic", xticks=index, title=f"red: p < {ALPHA}")
    ax.legend(fontsize=8)
    fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
    return fig


def ppc_figures(report: PPCReport, out_dir: str | Path) -> dict[str, Path]:
    """One figure per statistic of ``report``, written into ``out_dir/figures``; returns their
    paths keyed by ``"name/predictive"``."""
    figures_dir = Path(out_dir) / FIGURES_DIR
    written = {}
    for stat in report.statistics:
        key = f"{stat.name}/{stat.predictive}"
        path = figures_dir / f"ppc_{stat.name}_{stat.predictive}.png"
        written[key] = save_figure(statistic_figure(stat), path)
    return written
