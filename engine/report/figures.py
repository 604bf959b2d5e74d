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

__all__ = ["glass_brain", "stat_slices", "adjusted_bars", "scatter", "qc_scores", "overlay_montage", "subject_qc"]

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


def _world_slice(volume: np.ndarray, affine: np.ndarray, axis_world: int, at_mm: float, shape_out=None):
    """The voxel-axis slice of ``volume`` nearest to world coordinate ``at_mm`` along world axis ``axis_world``.

    Native images come in any orientation; the voxel axis that runs most along the wanted world axis is
    cut, and the slice is turned so that superior (or anterior) is up.
    """
    lin = np.asarray(affine, float)[:3, :3]
    axis = int(np.argmax(np.abs(lin[axis_world])))
    inv = np.linalg.inv(affine)
    centre = np.asarray(volume.shape) / 2.0
    point = affine[:3, :3] @ centre + affine[:3, 3]
    point[axis_world] = at_mm
    k = int(np.clip(round((inv[:3, :3] @ point + inv[:3, 3])[axis]), 0, volume.shape[axis] - 1))
    sl = np.take(volume, k, axis=axis)
    rest = [a for a in range(3) if a != axis]
    # orient: first remaining axis left-right/anterior, second up
    up_world = 2 if axis_world != 2 else 1
    dirs = [lin[up_world, a] for a in rest]
    if abs(dirs[0]) > abs(dirs[1]):
        sl = sl.T
        rest = rest[::-1]
    if lin[up_world, rest[1]] < 0:
        sl = sl[:, ::-1]
    return np.rot90(sl)


def subject_qc(label: str, t1: np.ndarray, t1_affine: np.ndarray, gm: np.ndarray, wm: np.ndarray,
               t1_mni: np.ndarray | None, mni_affine: np.ndarray, template_brain: np.ndarray,
               chi: np.ndarray | None, chi_affine: np.ndarray | None, chi_mask: np.ndarray | None,
               brain_centre_mm=None, verdict: str = "", r2star: np.ndarray | None = None) -> bytes:
    """One row per subject: what the numbers of QC are about, to be seen at a glance.

    Sagittal and axial T1 with the GM (red) and WM (blue) outlines, the T1 after
    normalisation with the template brain's outline (yellow) in three planes, and the
    χ map (−0.15 to 0.15 ppm) and the R2* map (0 to 60 /s, on χ's grid and mask) on
    an axial slice.
    """
    centre = np.asarray(brain_centre_mm if brain_centre_mm is not None else
                        np.asarray(t1_affine)[:3, :3] @ (np.asarray(t1.shape) / 2) + np.asarray(t1_affine)[:3, 3])
    fig, axes = plt.subplots(1, 7, figsize=(15.5, 2.4))
    for ax in axes:
        ax.axis("off")

    def grey(ax, img, title):
        img = np.nan_to_num(np.asarray(img, float))
        lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=7)

    for ax, (axis_world, name) in zip(axes[:2], [(0, "sagittal"), (2, "axial")]):
        at = centre[axis_world]
        grey(ax, _world_slice(t1, t1_affine, axis_world, at), f"{label} T1 {name}")
        for m, color in ((gm, "#e74c3c"), (wm, "#3498db")):
            ax.contour(_world_slice(m, t1_affine, axis_world, at), levels=[0.5], colors=color, linewidths=0.5)
    if t1_mni is not None:
        for ax, (axis_world, at, name) in zip(axes[2:5], [(0, 0.0, "x = 0"), (1, -18.0, "y = -18"),
                                                          (2, 5.0, "z = 5")]):
            grey(ax, _world_slice(t1_mni, mni_affine, axis_world, at), f"normalised T1, {name}")
            ax.contour(_world_slice(template_brain.astype(float), mni_affine, axis_world, at), levels=[0.5],
                       colors="#f1c40f", linewidths=0.6)
    if chi is not None and chi_affine is not None:
        shown = np.where(chi_mask, chi, np.nan) if chi_mask is not None else chi
        # GRE and T1 of one session share the scanner's coordinates: the same axial level as the T1's
        axes[5].imshow(_world_slice(shown, chi_affine, 2, centre[2] + 5.0), cmap="gray", vmin=-0.15, vmax=0.15)
        axes[5].set_title("χ (±0.15 ppm)", fontsize=7)
        if r2star is not None:
            r2 = np.where(chi_mask, r2star, np.nan) if chi_mask is not None else r2star
            axes[6].imshow(_world_slice(r2, chi_affine, 2, centre[2] + 5.0), cmap="gray", vmin=0.0, vmax=60.0)
            axes[6].set_title("R2* (0–60 /s)", fontsize=7)
    if verdict:
        fig.suptitle(verdict, fontsize=8, color="#c0392b" if verdict.startswith("excluded") else "#1e8449",
                     x=0.01, ha="left")
    return _png(fig)
