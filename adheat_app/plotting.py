"""Every figure adheat draws: training curves, ROC curves, registration QC, overlap curves, faithfulness curves,
distance matrices, brain mosaics and glass brains.

The one plotting module, below the steps that make figures (training,
preprocessing QC, evaluation) and the reports that show them. Figures are
rendered off-screen (matplotlib's Agg backend) to PNG bytes (or SVG text for
the registration QC figure); :func:`data_uri` embeds them in the
self-contained HTML reports, and :func:`save_png` writes them atomically
where a figure is an output file (``group/figures/``, ``group/*_roc.png``,
``models/<model>/fold-<k>/training_curve.png``). Brain images over the
template use nilearn (``plot_stat_map`` slice mosaics, ``plot_glass_brain``);
the per-subject mosaics use plain matplotlib, which is several times faster
for the many small panels of a cohort. nilearn runs a full garbage collection
for every image it reads; :func:`frozen_heap` keeps the objects alive before a
figure out of those collections (docs/performance.md).
"""

from __future__ import annotations

import base64
import functools
import gc
import io
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adheat_app.io import atomic_path  # noqa: E402
from adheat_app.layout import MapName  # noqa: E402

DPI = 90
#: Map values below this fraction of the display maximum (99.5th percentile of |map|) are not drawn, unless a
#: figure is given its own threshold (the mean maps: the top-k % of the overlap scores).
DISPLAY_THRESHOLD = 0.2
#: Colours of reference outlines (contours), cycled in the order the references are listed.
OUTLINE_COLORS = ("#00b4ff", "#30d030", "#ff40ff", "#ffd000", "#ff7a00")


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and release it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:`` URI embedding PNG bytes in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_png(png: bytes, path: Path) -> Path:
    """Write PNG bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return Path(path)


def overlap_curves(method: str, percents: Sequence[float], curves: Mapping[str, Mapping[str, np.ndarray]],
                   intervals: Mapping[str, Mapping[str, tuple]] | None = None,
                   chance: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> bytes:
    """Dice and overlap fraction against the top-k % of voxels, one line per reference, with its chance level.

    Parameters
    ----------
    method : str
        Method name (title).
    percents : sequence of float
        The k values of ``curves``.
    curves : mapping
        ``{reference: {"dice": array, "overlap_fraction": array}}``.
    intervals : mapping, optional
        ``{reference: {metric: (k values, low, high)}}``: bootstrap intervals drawn as error bars.
    chance : mapping, optional
        ``{reference: {"dice": array, "overlap_fraction": array}}`` at ``percents``: the score of a
        random map (:func:`adheat_app.evaluation.chance.chance_levels`), drawn dotted in the reference's colour.
    """
    fig = plt.figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, ("dice", "overlap_fraction"), ("Dice", "overlap fraction")):
        for i, (reference, values) in enumerate(curves.items()):
            color = f"C{i}"
            ax.plot(percents, values[metric], color=color, label=reference)
            if chance and reference in chance:
                ax.plot(percents, chance[reference][metric], color=color, linestyle=":",
                        label=f"{reference}: chance")
            if intervals and reference in intervals and metric in intervals[reference]:
                ks, low, high = intervals[reference][metric]
                mid = np.interp(ks, percents, values[metric])
                ax.errorbar(ks, mid, yerr=[np.clip(mid - low, 0, None), np.clip(high - mid, 0, None)], fmt="none",
                            ecolor=color, capsize=3)
        ax.set_xlabel("top k % of brain voxels")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(title="reference", fontsize=8)
    fig.suptitle(f"{method}: overlap with the reference maps (95 % bootstrap intervals)")
    return figure_png(fig)


#: Line styles of the faithfulness curves' orders (most relevant first, least relevant first, random).
ORDER_STYLES = {"morf": "-", "lerf": "--", "random": ":"}


def faithfulness_curves(curves: pd.DataFrame, fill: str) -> bytes:
    """Deletion (top row) and insertion (bottom row) curves, one column per unit kind, one colour per method.

    Parameters
    ----------
    curves : pandas.DataFrame
        ``group/faithfulness_curves.tsv`` (:func:`adheat_app.evaluation.faithfulness.curve_table`): columns
        ``method``, ``kind``, ``units``, ``order``, ``direction``, ``removed``, ``output``, ``ci_low``, ``ci_high``.
    fill : str
        The fill the curves used (title).

    Each method's map is drawn in every order (:data:`ORDER_STYLES`), the most-relevant-first curve with its
    interval band; a control map (``kind`` control) only most relevant first, thin and dash-dotted, in its
    method's colour.
    """
    units = list(dict.fromkeys(curves["units"]))
    methods = list(dict.fromkeys(MapName.parse(name).method for name in curves["method"]))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    fig = plt.figure(figsize=(4.2 * len(units), 6.4))
    axes = np.atleast_2d(fig.subplots(2, len(units), squeeze=False))
    for (name, kind, unit, order, direction), rows in curves.groupby(
            ["method", "kind", "units", "order", "direction"], sort=False):
        control = kind == "control"
        if control and order != "morf":
            continue
        ax = axes[0 if direction == "deletion" else 1, units.index(unit)]
        colour = colours[MapName.parse(name).method]
        ax.plot(rows["removed"], rows["output"], "-." if control else ORDER_STYLES[order], color=colour,
                alpha=0.7 if control else 1.0, linewidth=0.9 if control else 1.6, label=f"{name} {order}")
        if order == "morf" and not control:
            ax.fill_between(rows["removed"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, linewidth=0)
    for (row, column), ax in np.ndenumerate(axes):
        direction = ("deletion", "insertion")[row]
        ax.set_title(f"{direction}: {units[column]}", fontsize=10)
        ax.set_xlabel(f"share {'removed' if row == 0 else 'put back'}"
                      + (" (of the brain's voxels)" if units[column] == "blocks" else " (of the regions)"))
        ax.set_ylabel("explained output")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Faithfulness curves (fill: {fill}): mean over subjects, 95 % bootstrap band\n"
                 "solid most relevant first, dashed least, dotted random order, dash-dot control maps", fontsize=10)
    fig.tight_layout()
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_png(fig)


def faithfulness_description(how: str) -> str:
    """What the curves' figure shows (its sidecar's description and the report's alternative text)."""
    return (f"Deletion (top) and insertion (bottom) curves per unit kind (AAL3 regions, 5 % voxel blocks), fill "
            f"{how}: each map's mean explained output over subjects against the share removed or put back, most "
            "relevant first (solid, 95 % bootstrap band), least relevant first (dashed) and in random order "
            "(dotted, the map-free control); control maps (Random, PermutedLabels) most relevant first, thin and "
            "dash-dotted")


def roc_curves(predictions: pd.DataFrame, by: str = "model", title: str = "Out-of-fold ROC curves",
               prefix: str = "") -> bytes:
    """One ROC curve per group of rows (columns ``by``, ``target``, ``probability``), with the chance diagonal.

    Parameters
    ----------
    predictions : pandas.DataFrame
        E.g. ``group/predictions.tsv``: ``by="model"`` draws every model's
        pooled out-of-fold predictions, ``by="fold"`` each fold's test scans.
    by : str
        Column whose values are the curves (groups with one class only are left out).
    title : str
        Figure title.
    prefix : str
        Text before each group's value in the legend (e.g. ``"fold "``).
    """
    from sklearn.metrics import roc_curve

    fig = plt.figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    for name, rows in predictions.groupby(by, sort=True):
        target = rows["target"].astype(int).to_numpy()
        if len(set(target)) < 2:
            continue
        fpr, tpr, _ = roc_curve(target, rows["probability"].astype(float))
        ax.plot(fpr, tpr, label=f"{prefix}{name}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return figure_png(fig)


def training_curve(curve: pd.DataFrame, best_epoch: int, title: str) -> bytes:
    """Training loss per epoch, best epoch marked; validation loss and accuracy (right axis) where they were measured.

    A run without a validation split has no validation values (NaN in the curve): neither its lines nor its
    legend entries are drawn.
    """
    validated = bool(np.isfinite(curve["val_loss"].to_numpy(dtype=float)).any())
    fig = plt.figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(curve["epoch"], curve["train_loss"], label="training loss")
    if validated:
        ax.plot(curve["epoch"], curve["val_loss"], label="validation loss")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (class-weighted)")
    handles = ax.get_legend_handles_labels()[0]
    if validated:
        acc = ax.twinx()
        acc.plot(curve["epoch"], curve["val_accuracy"], color="tab:green", alpha=0.6, label="validation accuracy")
        acc.set_ylim(0, 1)
        acc.set_ylabel("validation accuracy")
        handles += acc.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    return figure_png(fig)


def registration_svg(image: np.ndarray, template: np.ndarray, mask: np.ndarray, title: str) -> str:
    """Three orthogonal slices of a registered T1w with the template's contours, as SVG text.

    Parameters
    ----------
    image, template, mask : numpy.ndarray
        Registered T1w, template T1w and template mask on the template grid (RAS).
    title : str
        Figure title (the scan key and its quality numbers).
    """
    voxels = np.argwhere(mask)
    centre = [int(round(c)) for c in voxels.mean(axis=0)]
    centre[0] = int(np.percentile(voxels[:, 0], 35))  # sagittal cut through a hemisphere, not the midline
    inside = image[mask]
    low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    levels = np.percentile(template[mask], [50]) if mask.any() else [0.5]
    fig = Figure(figsize=(9, 3.4))
    views = (("sagittal", lambda a: a[centre[0], :, :]), ("coronal", lambda a: a[:, centre[1], :]),
             ("axial", lambda a: a[:, :, centre[2]]))
    for index, (name, cut) in enumerate(views):
        ax = fig.add_subplot(1, 3, index + 1)
        ax.imshow(cut(image).T, origin="lower", cmap="gray", vmin=low, vmax=high, rasterized=True)
        ax.contour(cut(mask.astype(np.float32)).T, levels=[0.5], colors="#ff3030", linewidths=0.8)
        ax.contour(cut(template).T, levels=levels, colors="#ffd000", linewidths=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", dpi=90)
    return buffer.getvalue()


def matrix_heatmap(matrix: pd.DataFrame, title: str) -> bytes:
    """A labelled square matrix (e.g. distances between methods' mean maps)."""
    n = len(matrix)
    fig = plt.figure(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax = fig.subplots()
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis")
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix.iat[i, j]:.2f}", ha="center", va="center", color="white", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return figure_png(fig)


def frozen_heap(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw with every object alive at the call moved out of the garbage collector's reach (``gc.freeze``).

    nilearn's image reader calls ``gc.collect()`` for every image; with the heap
    of a group run (torch, pandas, the cohort's tables) each full collection
    takes a third of a second, most of a nilearn figure's time. Frozen objects
    are not scanned; they return to the collector when the figure is drawn.
    """
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> bytes:
        gc.freeze()
        try:
            return draw(*args, **kwargs)
        finally:
            gc.unfreeze()
    return wrapper


def _display_max(img: nib.Nifti1Image) -> float:
    """99.5th percentile of the absolute non-zero values (1 for an empty map)."""
    data = np.abs(np.asarray(img.dataobj, dtype=np.float32))
    return float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0


def top_threshold(values: np.ndarray, percent: float) -> float:
    """The smallest of the top ``percent`` % of ``values`` (ties with it included, as the overlap scores count).

    ``values`` are the brain voxels of a map (absolute relevance); the top ``k`` % are the
    ``ceil(k/100 * n)`` largest.
    """
    flat = np.ravel(values)
    count = max(1, math.ceil(percent / 100.0 * flat.size))
    return float(np.partition(flat, flat.size - count)[flat.size - count])


def outline_color(index: int) -> str:
    """The colour of the ``index``-th reference outline (the same reference keeps its colour in every figure)."""
    return OUTLINE_COLORS[index % len(OUTLINE_COLORS)]


@frozen_heap
def stat_mosaic(img: nib.Nifti1Image, background: nib.Nifti1Image, title: str, signed: bool = False,
                threshold: float | None = None, outlines: Sequence[tuple[str, nib.Nifti1Image]] = ()) -> bytes:
    """Axial slice mosaic of a map over the template (nilearn ``plot_stat_map``), with its colour bar.

    Parameters
    ----------
    threshold : float, optional
        |values| below it are not drawn (default: :data:`DISPLAY_THRESHOLD` of the display maximum).
    outlines : sequence of (name, image)
        Binary images (e.g. reference maps) drawn as contours in :func:`outline_color` order.
    """
    from nilearn import plotting

    vmax = _display_max(img)
    if threshold is not None:
        vmax = max(vmax, threshold * 1.0001)
    fig = plt.figure(figsize=(11, 2.4))
    display = plotting.plot_stat_map(
        img, bg_img=background, display_mode="z", cut_coords=7, title=title, figure=fig, colorbar=True,
        cmap="RdBu_r" if signed else "hot", vmax=vmax, symmetric_cbar=signed,
        threshold=vmax * DISPLAY_THRESHOLD if threshold is None else threshold,
        annotate=False, draw_cross=False, black_bg=False)
    for index, (_, outline) in enumerate(outlines):
        display.add_contours(outline, levels=[0.5], colors=[outline_color(index)], linewidths=1.0)
    png = figure_png(fig)
    display.close()
    return png


@frozen_heap
def glass_brain(img: nib.Nifti1Image, title: str, signed: bool = False, threshold: float | None = None) -> bytes:
    """Glass-brain projection of a map (nilearn ``plot_glass_brain``), |values| below ``threshold`` left out."""
    from nilearn import plotting

    vmax = _display_max(img)
    if threshold is not None:
        vmax = max(vmax, threshold * 1.0001)
    fig = plt.figure(figsize=(7, 2.4))
    display = plotting.plot_glass_brain(img, title=title, figure=fig, colorbar=True, plot_abs=not signed,
                                        cmap="RdBu_r" if signed else "hot", vmax=vmax,
                                        threshold=vmax * DISPLAY_THRESHOLD if threshold is None else threshold,
                                        annotate=False, black_bg=False)
    png = figure_png(fig)
    display.close()
    return png


def top_percent_grid(maps: Mapping[str, np.ndarray], brain: np.ndarray, background: np.ndarray,
                     outlines: Sequence[tuple[str, np.ndarray]], percent: float, slices: Sequence[int]) -> bytes:
    """Each map's top ``percent`` % of brain voxels over the template, the references' outlines on top.

    One column per map (in the given order; the key is its title), one row per view: the maximum projection
    along z, then an axial slice at each index of ``slices``. A voxel is coloured by the percentile of its
    absolute value among the map's brain voxels, so every column shares one colour bar from ``100 - percent``
    to 100.

    Parameters
    ----------
    maps : mapping of str to numpy.ndarray
        Column title -> map on the template grid (absolute values are ranked).
    brain : numpy.ndarray
        Brain mask (bool) of the grid: the voxels ranked and the outline's extent.
    background : numpy.ndarray
        Template T1w on the grid.
    outlines : sequence of (str, numpy.ndarray)
        Reference name and binary reference, drawn as contours in :func:`outline_color` order.
    percent : float
        The top-k % shown (one of the overlap scores' thresholds).
    slices : sequence of int
        Axial slice indices.
    """
    from scipy.stats import rankdata

    views = [("projection", None)] + [(f"z = {z}", int(z)) for z in slices]
    columns = max(1, len(maps))
    fig = Figure(figsize=(1.55 * columns + 0.9, 1.75 * len(views) + 0.7))
    grid = fig.add_gridspec(len(views), columns + 1, width_ratios=[1] * columns + [0.12], wspace=0.04,
                            hspace=0.08)
    bg_values = background[brain] if brain.any() else np.array([0.0, 1.0])
    low, high = np.percentile(bg_values, (1, 99))
    cmap = plt.get_cmap("hot")
    shown = None
    for c, (title, volume) in enumerate(maps.items()):
        values = np.abs(np.asarray(volume, dtype=np.float32))[brain]
        rank = np.zeros(brain.shape, dtype=np.float32)
        if values.size:
            rank[brain] = 100.0 * rankdata(values, method="max") / values.size
            rank[brain & (np.abs(volume) < top_threshold(values, percent))] = 0.0
        for r, (view, z) in enumerate(views):
            ax = fig.add_subplot(grid[r, c])
            if z is None:
                base, top = background.max(axis=2), rank.max(axis=2)
                masks = [mask.any(axis=2) for _, mask in outlines]
            else:
                base, top = background[:, :, z], rank[:, :, z]
                masks = [mask[:, :, z] for _, mask in outlines]
            ax.imshow(base.T, origin="lower", cmap="gray", vmin=low, vmax=high)
            shown = ax.imshow(np.ma.masked_less_equal(top.T, 0), origin="lower", cmap=cmap,
                              vmin=100.0 - percent, vmax=100.0)
            for index, mask in enumerate(masks):
                if mask.any():
                    ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=[outline_color(index)],
                               linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(view, fontsize=8)
    if shown is not None:
        bar = fig.colorbar(shown, cax=fig.add_subplot(grid[:, columns]))
        bar.set_label(f"percentile of the map's brain voxels (top {percent:g} %)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=outline_color(i), label=name) for i, (name, _) in enumerate(outlines)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
                   title="reference outlines", title_fontsize=8, bbox_to_anchor=(0.5, -0.02))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def quick_mosaic(maps: Mapping[str, np.ndarray], background: np.ndarray, n_slices: int = 5,
                 signed: Collection[str] = ()) -> bytes:
    """Rows of axial slices, one row per map with its colour bar, over a background volume (plain matplotlib).

    Parameters
    ----------
    maps : mapping of str to numpy.ndarray
        Row title -> volume on the background's grid. Absolute values are shown from
        :data:`DISPLAY_THRESHOLD` of their 99.5th percentile up (``hot``), except for the maps named in
        ``signed``: every value, on a symmetric blue-red scale up to the 99th percentile of |values|.
    background : numpy.ndarray
        Anatomical volume (the template or the subject's preprocessed T1w).
    n_slices : int
        Axial slices per row, evenly spaced over the brain.
    signed : collection of str
        Names of ``maps`` drawn signed (e.g. the log Jacobian).
    """
    brain = np.argwhere(background != 0)
    low, high = (brain[:, 2].min(), brain[:, 2].max()) if len(brain) else (0, background.shape[2] - 1)
    slices = np.linspace(low, high, n_slices + 2)[1:-1].round().astype(int)
    rows = max(1, len(maps))
    fig = Figure(figsize=(2.2 * n_slices + 0.8, 2.45 * rows))
    grid = fig.add_gridspec(rows, n_slices + 1, width_ratios=[1] * n_slices + [0.08], wspace=0.03, hspace=0.25)
    vmin_bg, vmax_bg = (np.percentile(background[background != 0], (1, 99)) if len(brain) else (0, 1))
    for r, (name, volume) in enumerate(maps.items()):
        values = np.asarray(volume, dtype=np.float32)
        if name in signed:
            top = float(np.percentile(np.abs(values[values != 0]), 99)) if np.any(values != 0) else 1.0
            shown, cmap, vmin, label = np.ma.masked_equal(values, 0), "RdBu_r", -top, name
        else:
            values = np.abs(values)
            top = float(np.percentile(values[values > 0], 99.5)) if np.any(values > 0) else 1.0
            shown, cmap, vmin, label = np.ma.masked_less_equal(values, DISPLAY_THRESHOLD * top), "hot", 0.0, \
                "|relevance|"
        for c, z in enumerate(slices):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(background[:, :, z].T, origin="lower", cmap="gray", vmin=vmin_bg, vmax=vmax_bg)
            drawn = ax.imshow(shown[:, :, z].T, origin="lower", cmap=cmap, vmin=vmin, vmax=top, alpha=0.85)
            ax.set_axis_off()
            if c == 0:
                ax.set_title(name, loc="left", fontsize=10)
        bar = fig.colorbar(drawn, cax=fig.add_subplot(grid[r, n_slices]))
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()
