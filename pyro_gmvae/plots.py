"""Figures: what a fitted GMVAE learned, and whether it reproduces the data.

Every function ``*_figure`` returns a matplotlib :class:`~matplotlib.figure.Figure` (which a notebook
shows inline) built without pyplot, so no global figure state is left behind and nothing needs
closing; :func:`save_figure` writes one as a PNG, atomically. Images are shown as grey images,
tables as per-feature profiles (feature index on the x axis, standardized value on the y axis).
Each figure is grown, where its text needs it, until every label lies inside it; legends sit
beside the axes, never over the data.

- :func:`training_figures`: everything ``gmvae train`` writes into ``RUN_DIR/figures``;
- :func:`ppc_figures`: the figures of a :class:`~pyro_gmvae.ppc.PPCReport`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .config import MAP_VIEWS
from .dataset import Dataset, ScaledRows, as_rows, has_label
from .files import atomic_write_bytes
from .metrics import contingency, match_clusters, matched_confusion
from .model import GMVAE
from .ppc import ALPHA, PPCReport, Statistic
from .rng import forked_seed, preserved

FIGURES_DIR = "figures"
#: pixels per inch of saved figures: a figure of size (w, h) inches is (100 w, 100 h) pixels
DPI = 100
#: at most this many points in a scatter plot (a random subset beyond it)
MAX_POINTS = 5000

#: one palette for the phases of training, in the order they first appear in the records
_PHASE_PALETTE = "tab10"
_PHASE_MARKERS = "os^Dv<>pPX"
# Accuracy on top, solid, and many-to-one dashed with open markers beneath it: the two coincide
# whenever each cluster's majority label is its matched one, and neither may hide the other.
_SCORE_STYLE = {
    "accuracy": dict(
        label="accuracy (one-to-one)", color="tab:blue", ls="-", lw=2, marker="o", ms=3, zorder=5
    ),
    "many_to_one_accuracy": dict(
        label="many-to-one accuracy",
        color="tab:orange",
        ls="--",
        lw=1.5,
        marker="s",
        ms=6,
        mfc="none",
        zorder=4,
    ),
    "nmi": dict(label="NMI", color="tab:green", ls="-.", lw=1.2, marker="^", ms=3, zorder=3),
    "ari": dict(label="ARI", color="tab:purple", ls=":", lw=1.2, marker="v", ms=3, zorder=3),
}
_BESIDE = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # legend placement


def _figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` inches rendered by Agg, outside pyplot: nothing global is
    touched (a notebook keeps its backend) and nothing needs closing."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fit_contents(fig: Figure, margin: float = 0.08) -> Figure:
    """Grow ``fig`` until everything it draws lies inside it, and return it.

    Constrained layout shrinks axes to make room for labels, but it cannot make a figure wider
    than a title or a column of tick labels that is wider itself: a few images of fixed aspect,
    a matrix of three columns. Then the figure grows by the overflow, and is laid out again.
    """
    for _ in range(4):
        fig.draw_without_rendering()
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
        width, height = fig.get_size_inches()
        grow_x = max(0.0, -box.x0) + max(0.0, box.x1 - width)
        grow_y = max(0.0, -box.y0) + max(0.0, box.y1 - height)
        if grow_x < 0.01 and grow_y < 0.01:
            break
        # Whole pixels, so that a saved PNG is exactly figsize * DPI.
        fig.set_size_inches(
            np.ceil(DPI * (width + (grow_x + margin if grow_x >= 0.01 else 0.0))) / DPI,
            np.ceil(DPI * (height + (grow_y + margin if grow_y >= 0.01 else 0.0))) / DPI,
        )
    return fig


def _legend_below(fig: Figure, axes) -> None:
    """One legend for all of ``axes``, in a row below them: beside the axes it would squeeze two
    panels, inside it would cover bars."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)


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


def _lighter(colour: Any, amount: float = 0.55) -> np.ndarray:
    """``colour`` mixed with white, ``amount`` of the way."""
    rgba = np.array(to_rgba(colour))
    rgba[:3] += amount * (1.0 - rgba[:3])
    return rgba


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
def _phase_runs(history: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The records split into runs of consecutive epochs of one phase, in order."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for record in history:
        phase = str(record.get("phase", "training"))  # records written before phases existed
        if runs and runs[-1][0] == phase:
            runs[-1][1].append(record)
        else:
            runs.append((phase, [record]))
    return runs


def _mixture_start(history: list[dict[str, Any]]) -> tuple[int, str] | None:
    """Where the mixture prior was started, as ``(index of the first record after it, label)``.

    The trainer stamps the first epoch after pretraining with ``start``, the t-SNE map it started
    from (``"codes"``, ``"data"`` or ``"joint"``); a start of another kind leaves no stamp, and is
    then the end of pretraining. None when there is neither.
    """
    for i, record in enumerate(history):
        start = record.get("start")
        if start:
            where = MAP_VIEWS.get(start)
            return (
                i,
                f"mixture start (t-SNE map of {where})" if where else f"mixture start ({start})",
            )
    for i in range(1, len(history)):
        if history[i - 1].get("phase") == "pretrain" and history[i].get("phase") != "pretrain":
            return i, "mixture start"
    return None


def training_curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Loss per epoch, one curve per phase of training, and the clustering scores per epoch when
    the records have them (``accuracy``, ``many_to_one_accuracy``, ``nmi``, ``ari``).

    The phases are the records' ``phase`` names in the order they first appear, whatever the
    recipe calls them, each in its own colour of one palette; each phase boundary is marked, and
    the start of the mixture prior too (:func:`_mixture_start`). Each phase's loss is its own
    objective, and no common scale is claimed for them.
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot (train for at least one epoch)")
    missing = [i for i, r in enumerate(history) if "loss" not in r or "epoch" not in r]
    if missing:
        raise ValueError(f"history records {missing[:5]} lack 'epoch' or 'loss'")
    runs = _phase_runs(history)
    phases = list(dict.fromkeys(phase for phase, _ in runs))
    palette = colormaps[_PHASE_PALETTE]
    scores = [k for k in _SCORE_STYLE if any(k in r for r in history)]
    fig = _figure(12.5 if scores else 7.5, 4.2)
    axes = fig.subplots(1, 2 if scores else 1, squeeze=False)[0]
    ax = axes[0]
    for phase, records in runs:
        i = phases.index(phase)
        first_run = next(r for p, r in runs if p == phase) is records
        ax.plot(
            [r["epoch"] for r in records],
            [r["loss"] for r in records],
            "-",
            marker=_PHASE_MARKERS[i % len(_PHASE_MARKERS)],
            color=palette(i % palette.N),
            markersize=3,
            label=phase if first_run else None,
        )
    start = _mixture_start(history)
    start_at = None if start is None else history[start[0]]["epoch"] - 0.5
    boundaries = [
        (before[-1]["epoch"] + after[0]["epoch"]) / 2
        for (_, before), (_, after) in zip(runs, runs[1:], strict=False)
    ]
    boundaries = [at for at in boundaries if at != start_at]  # the start's own line marks it
    for ax_ in axes:
        for j, at in enumerate(boundaries):
            label = "phase boundary" if j == 0 and ax_ is ax else None
            ax_.axvline(at, color="0.55", linestyle=":", linewidth=1, label=label)
        if start is not None:
            label = start[1] if ax_ is ax else None
            ax_.axvline(start_at, color="k", linestyle="--", linewidth=1.2, label=label)
    ax.set(xlabel="epoch", ylabel="loss per example (nats)", title="Training loss, by phase")
    ax.legend(title="phase", fontsize=8, title_fontsize=8, **_BESIDE)
    if scores:
        ax = axes[1]
        for key in scores:
            records = [r for r in history if key in r]
            ax.plot([r["epoch"] for r in records], [r[key] for r in records], **_SCORE_STYLE[key])
        ax.set(xlabel="epoch", ylabel="score", ylim=(0, 1.02), title="Clustering vs labels")
        ax.legend(fontsize=8, **_BESIDE)
    return _fit_contents(fig)


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
    with forked_seed(seed, model.device) if seed is not None else preserved(model.device):
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
        # A figure title, centred on the figure, rather than the axes' (which would stick out to
        # the right of a narrow grid); two short lines rather than one long one.
        fig.suptitle(
            f"Samples per cluster, {per_cluster} per row\nmean of p(x|z), z ~ p(z|y)", fontsize=10
        )
        return _fit_contents(fig)

    assigned = None if dataset is None else model.predict(dataset.x)
    ncols = min(K, 4)
    nrows = -(-K // ncols)
    fig = _figure(3.2 * ncols, 2.4 * nrows + 0.6 + _names_height(dataset, K, ncols))
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
    return _finish_profiles(fig, axes, K, dataset, "Samples per cluster: feature profiles")


def _tick_names(dataset: Dataset | None) -> list[str] | None:
    """Feature names to label the x axis with: up to 20 of them, else None (indices)."""
    names = None if dataset is None else dataset.feature_names
    return names if names and len(names) <= 20 else None


def _lowest(n_panels: int, ncols: int) -> list[int]:
    """The panels (of ``n_panels`` filled row by row) with no panel below them."""
    return [k for k in range(n_panels) if k + ncols >= n_panels]


def _names_height(dataset: Dataset | None, n_panels: int, ncols: int) -> float:
    """Inches that the rows of upright feature names take (one under each column's lowest panel),
    added to the figure so that long names do not squeeze the profiles."""
    names = _tick_names(dataset)
    if names is None:
        return 0.0
    rows = len({k // ncols for k in _lowest(n_panels, ncols)})
    return rows * 0.075 * max(len(str(n)) for n in names)


def _finish_profiles(
    fig: Figure, axes, n_panels: int, dataset: Dataset | None, title: str
) -> Figure:
    """The common end of the table figures: feature names (or indices) under each column's
    lowest panel, one legend beside all the panels (inside one it would cover its profiles)."""
    names = _tick_names(dataset)
    for k in _lowest(n_panels, axes.shape[1]):
        ax = axes.flat[k]
        ax.tick_params(labelbottom=True)  # shared x: only the bottom row labels by default
        if names:
            ax.set_xticks(np.arange(len(names)))
            ax.set_xticklabels(names, rotation=90, fontsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.supxlabel("feature")
    fig.supylabel("standardized value")
    fig.suptitle(title)
    return _fit_contents(fig)


# ------------------------------------------------------------------------------- reconstructions
def reconstructions_figure(
    model: GMVAE, x: np.ndarray | ScaledRows, n: int = 10, *, dataset: Dataset | None = None
) -> Figure:
    """Examples and their reconstructions ``E[x | z = encode(x)]``: originals above
    reconstructions for images, overlaid profiles for tables. ``x (N, D)``; the ``n`` examples
    shown are spread evenly over its rows (the only ones read of a ScaledRows)."""
    _positive(n, "n")
    x = as_rows(x)
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
        fig = _figure(1.6 + 0.6 * len(rows), 0.65 + 1.2 * h / w)
        ax = fig.subplots()
        pair = _as_images(np.stack([originals, recon]), image_shape)
        ax.imshow(image_mosaic(pair), cmap=_grey(), vmin=0, vmax=1)
        ax.set_yticks([h / 2, h + 1 + h / 2])
        ax.set_yticklabels(["original", "reconstruction"])
        ax.set_xticks([])
        fig.suptitle("Reconstructions: x and E[x | z = mean of q(z|x)]", fontsize=10)
        return _fit_contents(fig)

    ncols = min(len(rows), 5)
    nrows = -(-len(rows) // ncols)
    fig = _figure(3.0 * ncols, 2.3 * nrows + 0.6 + _names_height(dataset, len(rows), ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    features = np.arange(x.shape[1])
    for i, ax in enumerate(axes.flat):
        if i >= len(rows):
            ax.set_axis_off()
            continue
        ax.plot(features, originals[i], "ko", markersize=3, label="original")
        ax.plot(features, recon[i], "-", color="tab:orange", label="reconstruction")
        ax.set_title(f"example {rows[i]}", fontsize=9)
    return _finish_profiles(fig, axes, len(rows), dataset, "Reconstructions")


# ----------------------------------------------------------------------------------- latent space
def cluster_colours_by_label(
    labels: np.ndarray, clusters: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Colours in which cluster ids and label ids can be compared, though they are unrelated.

    Labels take :func:`cluster_colours` of the number of labels, by label value; a cluster takes
    the colour of the label :func:`~pyro_gmvae.metrics.match_clusters` matches it to, and a
    cluster left unmatched (more clusters than labels) a lighter shade of its most frequent
    label's colour (light grey when empty).

    Returns ``(cluster colours (K, 4), label colours (L, 4), {cluster: label} matching)``.
    """
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    label_colours = cluster_colours(int(labels.max()) + 1)
    matched = match_clusters(labels, clusters, n_clusters)
    counts = contingency(labels, clusters, n_clusters)  # (K, L)
    colours = np.empty((n_clusters, 4))
    for k in range(n_clusters):
        if k in matched:
            colours[k] = label_colours[matched[k]]
        elif counts[k].any():
            colours[k] = _lighter(label_colours[counts[k].argmax()])
        else:
            colours[k] = to_rgba("0.85")
    return colours, label_colours, matched


def latent_figure(
    model: GMVAE,
    x: np.ndarray | ScaledRows,
    labels: np.ndarray | None = None,
    *,
    label_names: list[str] | None = None,
    seed: int = 0,
) -> Figure:
    """The posterior means of z in 2-D (PCA when Z > 2), coloured by predicted cluster and, when
    ``labels (N,)`` are given, in a second panel by label. The cluster means mu_y are marked.

    With labels, each cluster takes the colour of the label it is matched to
    (:func:`cluster_colours_by_label`), so that the two panels can be compared colour for colour;
    rows whose label is missing are left out of the matching and drawn grey in the second panel.
    """
    from sklearn.decomposition import PCA

    x = as_rows(x)  # data on disk: the points kept are read, no more
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} examples")
    if len(x) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_POINTS, replace=False))
        x = x[keep]
        labels = None if labels is None else np.asarray(labels)[keep]
    if labels is not None:
        labels = np.asarray(labels)
        labelled = has_label(labels)
        if not labelled.any():
            labels = None  # nothing to colour by
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

    K = model.n_clusters
    # Beyond 16 clusters their legend takes two columns: widen the figure rather than the panels.
    fig = _figure((13 if labels is not None else 7.5) + (3 if K > 16 else 0), 5.5)
    axes = fig.subplots(1, 2 if labels is not None else 1, squeeze=False)[0]
    if labels is None:
        colours = cluster_colours(K)
        names = [f"cluster {k}" for k in range(K)]
        title = "Latent codes by predicted cluster"
    else:
        named, named_clusters = labels[labelled], clusters[labelled]
        colours, label_colours, matched = cluster_colours_by_label(named, named_clusters, K)
        present = np.unique(named)
        name_of = {
            int(v): str(label_names[v]) if label_names is not None else f"label {v}"
            for v in present
        }
        counts = contingency(named, named_clusters, K)
        names = [
            f"cluster {k} = {name_of[matched[k]]}"
            if k in matched
            else f"cluster {k}: mostly {name_of[int(counts[k].argmax())]} (unmatched)"
            for k in range(K)
        ]
        title = "Latent codes by predicted cluster\n(in the colour of the label it is matched to)"
    _scatter_by_group(axes[0], codes, clusters, colours, names)
    axes[0].scatter(*centres.T, marker="X", s=50, c="k", edgecolors="w", label="cluster means")
    axes[0].set_title(title)
    if labels is not None:
        if not labelled.all():
            unlabelled = codes[~labelled]
            axes[1].scatter(
                *unlabelled.T, s=4, color="0.8", alpha=0.6, label=f"no label ({len(unlabelled)})"
            )
        values = [int(v) for v in present]
        _scatter_by_group(
            axes[1],
            codes,
            labels,
            {v: label_colours[v] for v in values},
            {v: name_of[v] for v in values},
        )
        axes[1].set_title("Latent codes by label")
    for ax in axes:
        ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1])
        entries = len(ax.get_legend_handles_labels()[1])
        ax.legend(fontsize=7, markerscale=2, ncols=1 if entries <= 16 else 2, **_BESIDE)
    return _fit_contents(fig)


def _scatter_by_group(ax: Axes, points, groups, colours, names) -> None:
    """One scatter per group ``g`` (``groups == g``) with ``colours[g]`` and label ``names[g]``;
    ``colours`` and ``names`` are sequences indexed by group or dicts keyed by it."""
    keys = names.keys() if isinstance(names, dict) else range(len(names))
    for g in keys:
        mine = groups == g
        if mine.any():
            ax.scatter(*points[mine].T, s=4, color=colours[g], alpha=0.6, label=names[g])


# ----------------------------------------------------------------------------- confusion matrix
def confusion_figure(
    labels: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int | None = None,
    *,
    label_names: list[str] | None = None,
) -> Figure:
    """Counts of each label (rows) in each cluster (columns), the columns ordered by the best
    one-to-one matching of clusters to labels (:func:`~pyro_gmvae.metrics.matched_confusion`),
    the matched pairs outlined; the accuracy in the title is that of those pairs. Rows whose
    label is missing are left out, and the title says how many."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    left_out = 0
    if labels.ndim == 1 and labels.shape == clusters.shape:  # else matched_confusion says so
        labelled = has_label(labels)
        left_out = int((~labelled).sum())
        labels, clusters = labels[labelled], clusters[labelled]
    M, order = matched_confusion(labels, clusters, n_clusters)
    matched = match_clusters(labels, clusters, n_clusters)  # the matching that ordered M
    pairs = [(c, order.index(k)) for k, c in matched.items()]  # (row, column) of matched cells
    accuracy = sum(M[i, j] for i, j in pairs) / len(labels)
    L, K = M.shape
    fig = _figure(2.6 + 0.5 * K, 1.9 + 0.45 * L)
    ax = fig.subplots()
    # Cells of free aspect, made near square by the figure's size: a fixed aspect would leave
    # constrained layout to guess where the shrunk matrix's labels end up.
    image = ax.imshow(M, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label="examples")
    if K * L <= 400:
        for i in range(L):
            for j in range(K):
                dark = M[i, j] > 0.6 * M.max()
                ax.text(
                    j, i, M[i, j], ha="center", va="center", fontsize=7, color="w" if dark else "k"
                )
    for i, j in pairs:
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=1.5)
        )
    ax.set_xticks(range(K), [str(k) for k in order])
    names = label_names if label_names is not None else [str(v) for v in range(L)]
    ax.set_yticks(range(L), [str(names[v]) for v in range(L)])
    ax.set(xlabel="cluster (ordered by the matching;\nmatched pairs outlined)", ylabel="label")
    # A figure title sits above the colour bar as well as the matrix, never across it.
    title = f"Clusters vs labels\nmatched accuracy {accuracy:.3f}"
    if left_out:
        title += f"\n({left_out} rows without a label left out)"
    fig.suptitle(title, fontsize=10)
    return _fit_contents(fig)


# ------------------------------------------------------------------------------------ after train
def training_figures(
    model: GMVAE, dataset: Dataset, history: list[dict[str, Any]], out_dir: str | Path
) -> list[Path]:
    """The figures of a training run, written into ``out_dir/figures``; returns their paths.

    ``training_curves.png`` (when ``history`` has epochs), ``samples.png``,
    ``reconstructions.png``, ``latent.png`` and, when some rows of ``dataset`` have a label,
    ``confusion.png``.
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
    if dataset.labels is not None and dataset.labelled.any():
        fig = confusion_figure(
            dataset.labels,
            model.predict(dataset.x),
            model.n_clusters,
            label_names=dataset.label_names,
        )
        written.append(save_figure(fig, figures_dir / "confusion.png"))
    return written


# ------------------------------------------------------------------------------------------ PPC
_REPLICATES = {
    "posterior": "posterior predictive replicates",
    "prior": "prior predictive replicates",
    "permutation": "random splits of training and held-out pooled",
}


def statistic_figure(stat: Statistic) -> Figure:
    """A posterior predictive check as a picture.

    Scalar statistic: the replicated distribution (histogram) and the observed value (line), with
    the distributions behind it when the statistic summarises per-example values. Per-example
    statistic: each example's observed value against its replicates' 95% interval, the examples
    sorted by their replicated median, and the histogram of the examples' p-values. Per-pixel
    statistic: observed against replicated values and the map of p-values over the image. Other
    per-component statistics: each component's observed value against the replicates' 95%
    interval. Values with p < :data:`~pyro_gmvae.ppc.ALPHA` are drawn in red.
    """
    if stat.is_scalar:
        return _scalar_figure(stat)
    if stat.component == "example":
        return _per_example_figure(stat)
    extreme = stat.p_values < ALPHA
    share = f"{int(extreme.sum())} of {stat.n_components} {stat.component}s with p < {ALPHA}"
    rep_median = np.median(stat.replicated, axis=0)
    lo, hi = np.quantile(stat.replicated, [0.025, 0.975], axis=0)
    if stat.image_shape is not None or stat.n_components > 50:
        image = stat.image_shape is not None
        fig = _figure(12 if image else 7.5, 4.6)
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
        for mine, size, colour, label in (
            (~extreme, 6, "tab:blue", f"p >= {ALPHA}"),
            (extreme, 8, "tab:red", f"p < {ALPHA}"),
        ):
            if mine.any():  # no legend entry for what is not drawn
                ax.scatter(rep_median[mine], stat.observed[mine], s=size, color=colour, label=label)
        edges = [min(lo.min(), stat.observed.min()), max(hi.max(), stat.observed.max())]
        ax.plot(edges, edges, "k:", linewidth=1, label="observed = replicated")
        ax.set(
            xlabel=f"replicated {stat.axis_label}\n(median and 95% interval per {stat.component})",
            ylabel=f"observed {stat.axis_label}",
            title=share,
        )
        ax.legend(fontsize=8, **_BESIDE)
        if image:
            ax = axes[1]
            shown = ax.imshow(stat.p_values.reshape(stat.image_shape), cmap="magma", vmin=0, vmax=1)
            fig.colorbar(shown, ax=ax, label="p-value")
            ax.set(title="p-value per pixel (dark: not reproduced)", xticks=[], yticks=[])
        fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
        return _fit_contents(fig)

    fig = _figure(max(6.5, 0.45 * stat.n_components + 3.5), 4)
    ax = fig.subplots()
    index = np.arange(stat.n_components)
    ax.fill_between(
        index, lo, hi, color="tab:blue", alpha=0.25, step="mid", label="replicated 95% interval"
    )
    ax.plot(index, rep_median, "_", color="tab:blue", markersize=14, label="replicated median")
    for mine, colour, label in (
        (~extreme, "k", "observed"),
        (extreme, "tab:red", f"observed, p < {ALPHA}"),
    ):
        if mine.any():  # no legend entry for what is not drawn
            ax.scatter(index[mine], stat.observed[mine], color=colour, zorder=3, label=label)
    if "pi" in stat.details:
        ax.plot(index, stat.details["pi"], "x", color="tab:green", label="pi (mixture weights)")
    ax.set(xlabel=stat.component, ylabel=stat.axis_label, xticks=index, title=share)
    ax.legend(fontsize=8, **_BESIDE)
    fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
    return _fit_contents(fig)


def _scalar_figure(stat: Statistic) -> Figure:
    extra = [k for k in stat.details if k != "pi"][:2]
    fig = _figure(11 if len(extra) == 2 else 6.5, 4.3)
    axes = fig.subplots(1, 2 if len(extra) == 2 else 1, squeeze=False)[0]
    ax = axes[0]
    replicates = _REPLICATES.get(stat.predictive, f"{stat.predictive} replicates")
    ax.hist(stat.replicated[:, 0], bins=30, color="tab:blue", alpha=0.7, label=replicates)
    ax.axvline(stat.observed[0], color="tab:red", linewidth=2, label="observed")
    ax.set(
        xlabel=stat.axis_label,
        ylabel="replicates",
        title=f"p = {stat.p_value:.3f} ({stat.replicated.shape[0]} replicates)",
    )
    if len(extra) == 2:
        ax = axes[1]
        values = [stat.details[key] for key in extra]
        bins = np.histogram_bin_edges(np.concatenate(values), bins=40)
        for key, v, colour in zip(extra, values, ("tab:red", "tab:blue"), strict=True):
            name = stat.detail_names.get(key, key)
            ax.hist(v, bins=bins, density=True, alpha=0.5, color=colour, label=name)
        ax.set(xlabel=stat.detail_label, ylabel="density", title="The values behind it")
    _legend_below(fig, axes)
    fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
    return _fit_contents(fig)


def _per_example_figure(stat: Statistic) -> Figure:
    """Examples sorted by their replicated median: a band of replicated intervals with the
    observed values on it (a scatter of observed against replicated would stack thousands of
    examples into stripes), and the histogram of the examples' p-values."""
    extreme = stat.p_values < ALPHA
    rep_median = np.median(stat.replicated, axis=0)
    lo, hi = np.quantile(stat.replicated, [0.025, 0.975], axis=0)
    order = np.argsort(rep_median, kind="stable")
    rank = np.arange(stat.n_components)
    fig = _figure(13, 4.4)
    ax, hist_ax = fig.subplots(1, 2, width_ratios=[1.6, 1])
    ax.fill_between(
        rank, lo[order], hi[order], color="tab:blue", alpha=0.25, label="replicated 95% interval"
    )
    ax.plot(rank, rep_median[order], color="tab:blue", linewidth=1, label="replicated median")
    for mine, size, colour, label in (
        (~extreme[order], 3, "k", "observed"),
        (extreme[order], 8, "tab:red", f"observed, p < {ALPHA}"),
    ):
        if mine.any():  # no legend entry for what is not drawn
            ax.scatter(rank[mine], stat.observed[order][mine], s=size, color=colour, label=label)
    ax.set(
        xlabel=f"{stat.component}s, sorted by their replicated median",
        ylabel=stat.axis_label,
        title=f"Each {stat.component} against its own replicates",
    )
    ax.legend(fontsize=8, **_BESIDE)
    hist_ax.hist(stat.p_values, bins=np.linspace(0, 1, 21), color="0.6", edgecolor="w")
    hist_ax.axvline(ALPHA, color="tab:red", linestyle="--", label=f"p = {ALPHA}")
    hist_ax.set(
        xlabel=f"p-value of the {stat.component}",
        ylabel=f"{stat.component}s",
        title=f"{int(extreme.sum())} of {stat.n_components} with p < {ALPHA} "
        f"({100 * extreme.mean():.1f}%)",
    )
    hist_ax.legend(fontsize=8, **_BESIDE)
    fig.suptitle(f"{stat.title} ({stat.predictive} predictive)", fontsize=10)
    return _fit_contents(fig)


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


# ------------------------------------------------------------------------------ choosing K
def selection_figure(table: list[dict[str, Any]], recommended: int, rule: str = "") -> Figure:
    """The curves of choosing K: held-out log p(x) and ELBO per K with their standard errors as
    error bars, and the clusters each K actually used; the recommended K marked.

    ``table`` as :attr:`ClusterSelection.table <pyro_gmvae.selection.ClusterSelection.table>`
    holds it (one row per K with ``k``, ``heldout_log_likelihood[_se]``, ``heldout_elbo[_se]``,
    ``clusters_used``); ``rule``, when given, is printed under the panels.
    """
    if not table:
        raise ValueError("table is empty: no K to plot")
    ks = np.array([row["k"] for row in table])
    fig = _figure(11.0, 4.2)
    left, right = fig.subplots(1, 2)
    for key, style in (
        ("heldout_log_likelihood", dict(label="held-out log p(x) (importance weighted)", fmt="-o")),
        ("heldout_elbo", dict(label="held-out ELBO", fmt="--s", mfc="none")),
    ):
        left.errorbar(
            ks,
            [row[key] for row in table],
            yerr=[row[key + "_se"] for row in table],
            capsize=3,
            ms=4,
            **style,
        )
    used = [row["clusters_used"] for row in table]
    right.plot(ks, ks, ":", color="0.55", label="K (every cluster used)")
    right.plot(ks, used, "-o", ms=4, color="tab:green", label="clusters used")
    for ax in (left, right):
        label = f"recommended K = {recommended}" if ax is left else None  # one legend entry
        ax.axvline(recommended, color="k", ls="--", lw=1, label=label)
        ax.set_xticks(ks)
        ax.set_xlabel("K (number of clusters)")
    left.set(ylabel="nats per row (mean ± s.e.)", title="Held-out fit per K")
    right.set(ylabel="clusters with at least one row", title="Clusters used per K")
    right.set_ylim(0, ks.max() + 1)
    _legend_below(fig, (left, right))
    if rule:
        fig.suptitle(f"Recommended: {rule}", fontsize=8, wrap=True)
    return _fit_contents(fig)
