"""The group level: stack the MNI maps of every subject that passed into ``/mni``
(subject, x, y, z), fit each contrast of the spec voxelwise, estimate
smoothness, and write SPM-style tables (whole brain, extent rule, SVC),
permutation inference, ROI values, the deep-grey table and the clinical
statistics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ferritin.cohort.errors import GroupLevelError
from ferritin.cohort.layout import mni_stack_dataset, participants_frame
from ferritin.cohort.store import CohortStore, digest_params
from ferritin.cohort.templates import atlas_labels, load_template
from ferritin.stats.roi import label_image

from .derivatives import export_subjects, save_nifti, write_dataset_description
from .findings import clinical_tables, define_rois, extract_roi_values, peak_voxel, roi_dataset
from .nuclei import nuclei_frame
from .preflight import check_spec_against_participants
from .qc import qc_failures
from .qsm.mask import largest_component
from .records import PIPELINE_VERSION
from .spec import Contrast, StudySpec, complete_spec
from .tables import write_csv

__all__ = ["MIN_RELIABLE_DF", "group_design", "run_group", "GroupResult", "ContrastSummary"]


@dataclass
class ContrastSummary:
    """One fitted contrast as the group level reports it."""

    map: str  # the cohort map tested: chi, r2star or gm_mod_s
    table: pd.DataFrame  # whole-brain peaks (extent rule applied; permutation cluster p where run)
    svc: dict  # small volume -> its peak table
    fwhm_mm: list  # smoothness of the standardised residuals
    u: float  # height threshold (T)
    df: float  # residual degrees of freedom


@dataclass
class GroupResult:
    """What :func:`run_group` returns: who took part, who did not and why, and every result."""

    subjects: list  # in the design's order
    excluded: dict  # subject -> reason
    contrasts: dict = field(default_factory=dict)  # name -> ContrastSummary
    warnings: list = field(default_factory=list)
    findings: dict = field(default_factory=dict)  # "rois" and the clinical tables
    nuclei: pd.DataFrame = field(default_factory=pd.DataFrame)  # the deep-grey table, tidy

#: Fewer residual degrees of freedom than this make the smoothness estimate from the
#: residuals (and with it the RFT p-values) too variable to report without a warning.
MIN_RELIABLE_DF = 10


def _check_enough_subjects(subjects: list[str], excluded: dict, table: pd.DataFrame, spec: StudySpec) -> None:
    """Refuse a cohort the group model cannot be fitted to, saying why in the terms of the spec and the table.

    Raises
    ------
    GroupLevelError
        Naming a covariate that is not a column of participants.tsv, a group
        with no usable subject, or how many subjects were lost to each reason.
    """
    from collections import Counter

    measured = {"tiv"}  # the anatomy measures it; participants.tsv need not have it
    for cov in spec.covariates:
        if cov not in measured and cov not in table.columns:
            raise GroupLevelError(f"covariate {cov!r} of the spec is not a column of participants.tsv "
                                  f"(columns: {', '.join(sorted(map(str, table.columns)))})")
    present = Counter(str(g) for g in table.loc[subjects, "group"]) if subjects and "group" in table else Counter()
    empty = [g for g in spec.groups if present[g] == 0]
    needed = len(spec.groups) + len(spec.covariates) + 2
    if not empty and len(subjects) >= needed:
        return
    kinds = Counter(reason.split(":")[0].split(" (")[0] for reason in excluded.values())
    why = "; ".join(f"{n} {kind}" for kind, n in kinds.most_common()) or "none excluded"
    lacking = f"group(s) {', '.join(map(repr, empty))} have no usable subject; " if empty else ""
    raise GroupLevelError(f"{lacking}{len(subjects)} usable subjects, and the model ({len(spec.groups)} groups, "
                          f"covariates {', '.join(spec.covariates) or 'none'}) needs at least {needed}; "
                          f"excluded: {why} (the run's summary names each subject)")


def _implausible_smoothness(contrast: str, fwhm_mm, grid) -> list[str]:
    """A warning when the residuals' smoothness is not a smoothness: wider than the field of view, or not finite.

    It happens with almost no residual degrees of freedom or residuals that are
    nearly constant; every RFT p-value then rests on a number with no meaning.
    """
    extent = np.asarray(grid.shape, float) * grid.voxel_size
    fwhm = np.asarray(fwhm_mm, float)
    if np.all(np.isfinite(fwhm)) and np.all(fwhm <= extent):
        return []
    shown = ", ".join(f"{v:.3g}" for v in fwhm)
    return [f"{contrast}: the smoothness estimated from the residuals (FWHM {shown} mm) is not plausible (the field "
            f"of view is {', '.join(f'{v:.0f}' for v in extent)} mm): the RFT p-values of this contrast are not "
            f"meaningful"]


def _group_subjects(store: CohortStore, spec: StudySpec) -> tuple[list[str], dict[str, str], pd.DataFrame]:
    """Subjects usable for group statistics, and why the others are not."""
    if not store.exists("participants"):
        raise GroupLevelError(f"{store.path}: nothing ingested yet; run the participant level first")
    participants = participants_frame(store.open_node("participants").load())
    check_spec_against_participants(spec, participants, "participants.tsv (as ingested)")
    excluded: dict[str, str] = {}
    rows = []
    criteria = spec.qc
    failures = store.failures()
    for sub in store.children("native"):
        for stage in ("ingest", "anat", "qsm"):
            if sub in failures.get(stage, {}):
                excluded[sub] = failures[stage][sub]
                break
        else:
            if store.record(f"derived/{sub}/anat") is None or store.record(f"derived/{sub}/qsm") is None:
                excluded[sub] = "not processed (run the participant level first)"
                continue
            attrs = store.open_node(f"derived/{sub}/anat").attrs
            failed = qc_failures(dict(attrs), criteria)
            if failed:
                excluded[sub] = "anatomy QC failed: " + "; ".join(failed)
                continue
            if sub not in participants.index:
                excluded[sub] = "no row in participants"
                continue
            group = participants.loc[sub, "group"]
            if group not in spec.groups:
                excluded[sub] = f"group {group!r} is not in the spec's groups {list(spec.groups)}"
                continue
            rows.append({"subject": sub, "tiv": attrs["tiv_ml"], "qc_gm_corr": attrs["qc_gm_corr"]})
    table = pd.DataFrame(rows).set_index("subject") if rows else pd.DataFrame(columns=["tiv", "qc_gm_corr"])
    table = pd.merge(participants, table, left_index=True, right_index=True, how="inner",
                     suffixes=("", "_measured"))
    return list(table.index), excluded, table


def group_design(table: pd.DataFrame, spec: StudySpec):
    """The participants table the group model uses and its design matrix.

    TIV is the one measured by the anatomy stage when the store has it
    (``tiv_measured``), not a value from ``participants.tsv``.

    Returns
    -------
    design_table : DataFrame indexed by subject
    design : :class:`stats.design.Design`
    """
    from ferritin.stats.design import DesignError, design_matrix

    design_table = table.copy()
    if "tiv" in spec.covariates and "tiv_measured" in design_table.columns:
        design_table["tiv"] = design_table["tiv_measured"]
    try:
        return design_table, design_matrix(design_table, groups=list(spec.groups), covariates=list(spec.covariates))
    except DesignError as exc:
        raise GroupLevelError(f"the group model cannot be built: {exc}") from None


def run_group(store_path: str | Path, spec: StudySpec, out_dir: str | Path, client=None) -> GroupResult:
    """Stack, fit every contrast of the spec, write maps, tables, ROI values and derivatives.

    Returns a :class:`GroupResult`: the subjects used, those excluded with
    reasons, and per contrast the whole-brain and SVC tables.  Holds the store's lock.
    With a ``client``, the permutations run as tasks on its workers (the
    same results, whatever the number of workers).
    """
    spec = complete_spec(spec)
    with CohortStore(store_path).lock("group level"):
        return _run_group(store_path, spec, out_dir, client)


def _run_group(store_path, spec: StudySpec, out_dir, client=None) -> GroupResult:

    store = CohortStore(store_path)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "group").mkdir(parents=True, exist_ok=True)
    subjects, excluded, table = _group_subjects(store, spec)
    _check_enough_subjects(subjects, excluded, table, spec)
    vs = spec.mni_voxel_size
    template = load_template(vs)
    mni, digest = _stack_subjects(store, subjects, table, template.grid)
    design_table, design = group_design(table, spec)
    order = [subjects.index(s) for s in design.subjects]
    results = GroupResult(list(design.subjects), excluded)
    df = len(design.subjects) - np.linalg.matrix_rank(design.X)
    if df < MIN_RELIABLE_DF:
        results.warnings.append(
            f"only {df} residual degrees of freedom ({len(design.subjects)} subjects, {design.X.shape[1]} model "
            f"columns): the smoothness estimate and every RFT and permutation p-value are unreliable below "
            f"{MIN_RELIABLE_DF}; add subjects or remove covariates")
    contrast_results = {}
    for c in spec.contrasts:
        if c.map not in mni:
            raise GroupLevelError(f"contrast {c.name!r} tests {c.map!r}, which this store's subjects do not have "
                                  f"(computed before it existed): run the participant level again")
        res, perm_table, perm_vars = _fit_contrast(mni[c.map].data[order], design, c, spec, template, client)
        _write_contrast(store, out, c, res, perm_table, perm_vars, design, spec, template.grid, digest)
        contrast_results[c.name] = res
        results.warnings.extend(_implausible_smoothness(c.name, res.fwhm_vox * vs, template.grid))
        results.contrasts[c.name] = ContrastSummary(c.map, res.table, res.svc, (res.fwhm_vox * vs).tolist(), res.u,
                                                    res.df)
    (out / "tables" / "excluded.json").write_text(json.dumps(excluded, indent=2))
    used = design_table.loc[list(design.subjects)]
    write_csv(used, out / "tables" / "subjects.csv", index_label="subject")
    results.findings = _findings(store, mni.isel(subject=order), contrast_results, spec, template, used, out,
                                    digest)
    results.nuclei = _nuclei_table(store, list(design.subjects), used, out, digest)
    write_dataset_description(out)
    export_subjects(store, store.children("derived"), out, vs, client)
    (out / "spec.yaml").write_text(spec.to_yaml())
    (out / "group" / "run.json").write_text(json.dumps({"store": str(store.path), "pipeline_version": PIPELINE_VERSION,
                                                        "warnings": results.warnings}))
    store.consolidate()
    return results


def _stack_subjects(store: CohortStore, subjects: list[str], table: pd.DataFrame, grid):
    """``/mni``: every usable subject's χ, R2* and smoothed modulated GM as (subject, x, y, z), with its digest.

    One dask array per map, chunks of one subject's whole volume; the GLM
    re-chunks to voxel blocks with all subjects.
    """
    import dask.array as da

    maps = {}
    for name, node, var in (("chi", "qsm", "chi_mni"), ("r2star", "qsm", "r2star_mni"), ("gm_mod_s", "anat", "gm_mod_s")):
        opened = [store.open_node(f"derived/{s}/{node}") for s in subjects]
        if not all(var in ds for ds in opened):  # a store computed before R2* existed
            continue
        maps[name] = da.stack([ds[var].data for ds in opened]).rechunk((-1, 32, 32, 32))
    participants_cols = {c: table[c].to_numpy() for c in table.columns}
    stack = mni_stack_dataset(maps, subjects, grid, participants_cols)
    digest = digest_params([store.record(f"derived/{s}/{node}")["digest"] for s in subjects for node in ("anat", "qsm")],
                           PIPELINE_VERSION)
    if not store.is_current("mni", digest):
        store.write_node("mni", stack, stage="stack", digest=digest)
    return store.open_node("mni"), digest


def _nuclei_table(store: CohortStore, subjects: list[str], participants: pd.DataFrame, out: Path,
                  digest: str) -> pd.DataFrame:
    """``/nuclei`` (subject, region, map, statistic) and ``tables/nuclei.csv`` from every subject's QSM node.

    Empty when the subjects were processed before the table existed.
    """
    opened = [store.open_node(f"derived/{s}/qsm") for s in subjects]
    if not opened or not all("nuclei" in ds for ds in opened):
        return pd.DataFrame()
    table = xr.concat([ds["nuclei"].load() for ds in opened], dim=pd.Index(subjects, name="subject"))
    groups = participants["group"].astype(str)
    ds = table.to_dataset(name="nuclei").assign_coords(group=("subject", groups.reindex(subjects).to_numpy()))
    store.write_node("nuclei", ds, stage="nuclei", digest=digest_params(digest, "nuclei"))
    frame = nuclei_frame(table, groups)
    write_csv(frame, out / "tables" / "nuclei.csv", index=False)
    return frame


def _contrast_weights(design, c: Contrast) -> np.ndarray:
    """The contrast's weights on the design's columns, or a user error naming the contrast."""
    from ferritin.stats.design import DesignError

    try:
        return design.contrast(c.weights)
    except DesignError as exc:
        raise GroupLevelError(f"contrast {c.name!r} ({c.weights}): {exc}") from None


def _fit_contrast(Y, design, c: Contrast, spec: StudySpec, template, client=None):
    """One contrast of the spec: GLM, RFT tables, SVC and (if asked) permutation inference."""
    import dask.array as da

    from ferritin.stats.analysis import analyse_contrast

    grid, inf = template.grid, spec.inference
    names = atlas_labels()["name"].to_dict()
    if c.map in ("chi", "r2star"):  # defined where every subject's QSM mask reaches
        finite = np.isfinite(Y).all(axis=0).compute()
        # Largest connected part; holes (voxels some subject's chi does not
        # cover) stay out: filled, they entered the model as 0 for that
        # subject and, on null cohorts, made significant "effects" where
        # coverage differed by chance.  Holes add to the search volume's
        # Euler characteristic, which only makes the correction more
        # conservative.
        mask = largest_component(finite & template.brain_mask)
        Y = da.where(da.isfinite(Y), Y, 0.0)
    else:
        mask = (template.gm > 0.2) & template.brain_mask
    regions = {}
    for s in spec.svc:
        region = template.region(s.region) if s.region else None
        regions[s.name] = (region, s.radius_mm, s.centre_mm)
    res = analyse_contrast(Y, design.X, _contrast_weights(design, c), mask, grid.affine,
                           height_p=inf.height_p, extent_mm3=inf.extent_voxels,
                           svc_regions=regions, alpha=inf.svc_alpha,
                           labels_img=template.atlas, label_names=names)
    perm_table, perm_vars = None, {}
    n_perm = inf.permutations
    if n_perm > 0:
        perm_table, perm_vars = _permutation_inference(Y, design, c, res, grid, n_perm, inf, names, template,
                                                       client)
        # each RFT cluster's permutation p: the clusters are the same (same T, height and
        # connectivity), so the one holding a row's peak voxel is that row's cluster
        cluster_p = perm_vars["p_fwe_cluster_mass"][1]
        res.table["cluster_p_fwe_perm"] = [float(cluster_p[peak_voxel(grid, r)]) for _, r in res.table.iterrows()]
    return res, perm_table, perm_vars


def _write_contrast(store: CohortStore, out: Path, c: Contrast, res, perm_table, perm_vars: dict, design, spec: StudySpec,
                    grid, digest: str) -> None:
    """A fitted contrast's outputs: ``/stats/<name>``, its tables and its BIDS-derivative maps."""
    vs = spec.mni_voxel_size
    ds = xr.Dataset(
        {"T": (("x", "y", "z"), res.T.astype(np.float32)), "effect": (("x", "y", "z"), res.effect.astype(np.float32)),
         "mask": (("x", "y", "z"), res.mask.astype(np.uint8)), **perm_vars},
        coords={ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()},
        attrs={"df": res.df, "fwhm_vox": res.fwhm_vox.tolist(), "fwhm_mm": (res.fwhm_vox * vs).tolist(),
               "resels": res.resels.tolist(), "u": res.u, "k_voxels": res.k_voxels,
               "fwe_threshold": res.fwe_threshold, "contrast": str(c.weights), "map": c.map,
               "design_columns": list(design.columns), "subjects": list(design.subjects)},
    )
    store.write_node(f"stats/{c.name}", ds, stage="group", digest=digest_params(digest, asdict(c), asdict(spec.inference)))
    if perm_table is not None:
        write_csv(perm_table, out / "tables" / f"{c.name}_permutation.csv", index=False)
    write_csv(res.table, out / "tables" / f"{c.name}_clusters.csv", index=False)
    svc_rows = [t.copy().assign(svc=name)[["svc", *t.columns]] for name, t in res.svc.items()]
    svc_all = pd.concat(svc_rows, ignore_index=True) if svc_rows else pd.DataFrame()
    write_csv(svc_all, out / "tables" / f"{c.name}_svc.csv", index=False)
    save_nifti(np.where(res.mask, res.T, 0.0), grid.affine, out / "group" / f"contrast-{c.name}_stat-t_statmap.nii.gz",
               {"df": res.df, "height_threshold_T": res.u, "extent_voxels": res.k_voxels,
                "fwe_threshold_T": res.fwe_threshold, "fwhm_mm": (res.fwhm_vox * vs).tolist(),
                "contrast": str(c.weights), "map": c.map})
    save_nifti(res.mask, grid.affine, out / "group" / f"contrast-{c.name}_mask.nii.gz")


def _permutation_inference(Y, design, c, res, grid, n_perm, inf, names, template, client=None):
    """Freedman–Lane permutations of one contrast: a cluster table (cluster mass and TFCE FWE p) and maps."""
    from ferritin.stats.permutation import cluster_p_map, cluster_table, permutation_cluster

    tfce_dh = 0.1 if inf.tfce else None
    perm = permutation_cluster(Y, design.X, _contrast_weights(design, c), res.mask, n_perm=n_perm,
                               seed=inf.permutation_seed, cluster_forming_t=res.u, tfce_dh=tfce_dh, client=client)
    table = cluster_table(perm, res.mask, grid.affine, template.atlas, names)
    maps = {"p_fwe_max_t": (("x", "y", "z"), perm.p_fwe.astype(np.float32)),
            "p_fwe_cluster_mass": (("x", "y", "z"), cluster_p_map(perm))}
    if perm.tfce_obs is not None:
        maps["tfce"] = (("x", "y", "z"), perm.tfce_obs.astype(np.float32))
        maps["p_fwe_tfce"] = (("x", "y", "z"), perm.tfce_p_fwe.astype(np.float32))
    table.attrs["n_perm"] = n_perm
    return table, maps


def _findings(store, mni, contrast_results, spec, template, participants, out: Path, digest) -> dict:
    """ROIs from the significant clusters, their values per subject, the clinical tables."""
    masks, sources = define_rois(contrast_results, spec, template)
    write_csv(sources, out / "tables" / "roi_sources.csv", index=False)
    csv = out / "tables" / "roi_values.csv"
    if not masks:
        write_csv(pd.DataFrame(columns=["subject", "group", "roi", "map", "value"]), csv, index=False)
        if store.exists("roi"):
            store.remove_node("roi")
        tables = clinical_tables(pd.DataFrame(columns=["subject", "roi", "map", "value"]), participants, spec)
    else:
        roi_long = extract_roi_values(mni, masks)
        roi_long.insert(1, "group", participants.loc[roi_long["subject"], "group"].to_numpy())
        store.write_node("roi", roi_dataset(roi_long, masks, sources, template.grid), stage="roi",
                         digest=digest_params(digest, sorted(masks), asdict(spec.roi)))
        # one volume per ROI (they may overlap), and a label image for viewers
        save_nifti(np.stack(list(masks.values()), axis=-1), template.grid.affine, out / "group" / "desc-roi_mask.nii.gz")
        save_nifti(label_image(masks)[0], template.grid.affine, out / "group" / "desc-roi_dseg.nii.gz")
        write_csv(pd.DataFrame({"index": range(1, len(masks) + 1), "name": list(masks)}),
            out / "group" / "desc-roi_dseg.tsv", sep="\t", index=False)
        write_csv(roi_long, csv, index=False)
        # the tables are computed from the CSV as written, so that anyone can
        # reproduce every number from the files alone
        tables = clinical_tables(csv, participants, spec)
    for name, t in tables.items():
        write_csv(t, out / "tables" / f"{name}.csv", index=False)
    return {"rois": sources, **tables}
