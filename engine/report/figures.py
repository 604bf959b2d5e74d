"""Figures of the study report, each returned as PNG bytes.

nilearn draws the brain maps (glass brain, slices at the peaks on the
template), matplotlib the plots.  Every function takes arrays and tables
and returns bytes, so the report embeds them and stays one offline file.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["glass_brain", "stat_slices", "adjusted_bars", "scatter", "qc_scores", "overlay_montage"]

_COLORS = ["#c0392b", "#2471a3", "#27ae60", "#8e44ad", "#d68910"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _display_png(display) -> bytes:
    fig = display.frame_axes.figure  # nilearn saves to file names only; the figure takes a buffer
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, facecolor=fig.get_facecolor())
    display.close()
    return buf.getvalue()


def glass_brain(T: np.ndarray, affine, threshold: float, title: str) -> bytes:
    """Maximum-intensity projections of a T map above ``threshold`` (the contrast's direction only)."""
    from nilearn import plotting

    img = nib.Nifti1Image(np.clip(np.nan_to_num(np.asarray(T, dtype=np.float32)), 0, None), np.asarray(affine))
    display = plotting.plot_glass_brain(img, threshold=threshold, colorbar=True, plot_abs=False, title=title,
                                        display_mode="lyrz", cmap="hot", vmin=threshold)
    return _display_png(display)


def stat_slices(T: np.ndarray, affine, background: np.ndarray, threshold: float, cut_mm, title: str) -> bytes:
    """Orthogonal slices through ``cut_mm`` of a thresholded T map over the template T1."""
    from nilearn import plotting

    img = nib.Nifti1Image(np.clip(np.nan_to_num(np.asarray(T, dtype=np.float32)), 0, None), np.asarray(affine))
    bg = nib.Nifti1Image(np.asarray(background, dtype=np.float32), np.asarray(affine))
    display = plotting.plot_stat_map(img, bg_img=bg, threshold=threshold, cut_coords=tuple(float(c) for c in cut_mm),
                                     title=title, cmap="hot", draw_cross=True, dim=-0.3)
    return _display_png(display)


def adjusted_bars(roi_groups: pd.DataFrame, groups, map_name: str, ylabel: str) -> bytes:
    """Covariate-adjusted group means ± s.e. of one map in every ROI."""
    t = roi_groups[roi_groups["map"] == map_name]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(len(t), 1), 3.2))
    width = 0.8 / len(groups)
    x = np.arange(len(t))
    for n, g in enumerate(groups):
        ax.bar(x + (n - (len(groups) - 1) / 2) * width, t[f"{g} adj mean"], width, yerr=t[f"{g} adj se"],
               capsize=3, color=_COLORS[n % len(_COLORS)], label=g)
    for xi, p in zip(x, t["p"]):
        ax.annotate(f"p={p:.3g}", (xi, ax.get_ylim()[1]), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [r.replace("_", " ") for r in t["roi"]], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def scatter(frame: pd.DataFrame, x: str, y: str, group: str, groups, xlabel: str, ylabel: str,
            stats_text: dict | None = None) -> bytes:
    """Scatter of y against x per group with least-squares lines (and the R of each)."""
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    for n, g in enumerate(groups):
        d = frame[frame[group] == g][[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
        if d.empty:
            continue
        color = _COLORS[n % len(_COLORS)]
        label = g if not stats_text or g not in stats_text else f"{g}: {stats_text[g]}"
        ax.scatter(d[x], d[y], s=14, color=color, label=label, alpha=0.8)
        if len(d) > 2 and d[x].std() > 0:
            slope, intercept = np.polyfit(d[x], d[y], 1)
            xs = np.linspace(d[x].min(), d[x].max(), 20)
            ax.plot(xs, slope * xs + intercept, color=color, lw=1.5)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def qc_scores(scores: pd.Series, threshold: float, excluded: set) -> bytes:
    """Normalisation QC score of every subject against the exclusion threshold."""
    s = scores.sort_values()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(s) + 1), 2.8))
    colors = ["#c0392b" if (sub in excluded or v < threshold) else "#2471a3" for sub, v in s.items()]
    ax.bar(range(len(s)), s.to_numpy(), color=colors)
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xticks(range(len(s)), [str(v).replace("sub-", "") for v in s.index], rotation=90, fontsize=6)
    ax.set_ylabel("GM correlation with template", fontsize=8)
    ax.set_ylim(min(0.0, float(s.min()) - 0.05) if len(s) else 0, 1)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def overlay_montage(panels: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> bytes:
    """One axial slice per subject: a grey image with a red outline (e.g. mask or template GM)."""
    n = max(len(panels), 1)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, image, outline) in zip(axes.ravel(), panels):
        img = np.nan_to_num(np.asarray(image, dtype=float))
        lo, hi = np.percentile(img, [1, 99]) if img.any() else (0, 1)
        ax.imshow(np.rot90(img), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        if outline is not None and np.asarray(outline).any():
            ax.contour(np.rot90(np.asarray(outline, dtype=float)), levels=[0.5], colors="#e74c3c", linewidths=0.8)
        ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)
