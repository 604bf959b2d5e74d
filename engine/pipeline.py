"""The study pipeline: per-subject stages mapped on Dask, then the group reduce.

Participant level (one Dask task per subject per stage, results written to the
store as they finish, each with a completion record):

    native/<sub> ──anat──▶ derived/<sub>/anat ──qsm──▶ derived/<sub>/qsm

The anatomy comes first: its brain mask bounds the QSM mask and its point map
carries χ to MNI (``derived/<sub>/qsm`` holds χ native and in MNI space).

Group level: stack the MNI maps of every subject that passed into ``/mni``
(subject, x, y, z), fit each contrast of the spec voxelwise, estimate
smoothness, and write SPM-style tables (whole brain, extent rule, SVC) to
``/stats/<contrast>`` and ``tables/``.

A re-run skips every node whose record matches its inputs and parameters; a
changed anatomy parameter recomputes anatomy and QSM, a changed QSM parameter
only QSM.  A subject whose stage raises is recorded in ``/log`` with the
reason and left out of the group statistics.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ferritin.cohort.errors import GroupLevelError
from ferritin.cohort.layout import mni_stack_dataset, participants_frame
from ferritin.cohort.progress import peak_worker_memory, track
from ferritin.cohort.store import CohortStore, affine_attr, digest_params
from ferritin.cohort.templates import atlas_labels, load_template
from ferritin.stats.roi import label_image

from .anat import AnatParams, chi_to_mni, process_anatomy_checked, renormalise_on_tissue, t1_brain_on_gre
from .chi_reference import reference_region, referenced
from .cluster import subject_task
from .derivatives import export_subjects, save_nifti, write_dataset_description
from .findings import _peak_voxel, clinical_tables, define_rois, extract_roi_values, roi_dataset
from .nuclei import nuclei_frame, subject_nuclei
from .preflight import check_spec_against_participants
from .qc import qc_failures
from .qsm.chain import reconstruct_qsm
from .qsm.mask import largest_component
from .qsm.relaxometry import background_noise_sd, r2star_loglinear, r2star_warning
from .spec import Contrast, StudySpec, complete_spec
from .tables import write_csv
from .timing import StepClock

__all__ = ["run_participants", "run_group", "RunSummary", "qsm_stage", "anat_stage", "stage_seconds",
           "PIPELINE_VERSION"]

# Raised whenever a stage computes something different from the same inputs and
# parameters, so that stores made by an earlier version recompute it.
PIPELINE_VERSION = 9  # 2: the QSM quality step keeps deep sources; 3: affine brain to brain; 4: N4 2 levels;
#                       5: warped GM and WM stored (study template of tissue maps);
#                       6: the affine stored, for the study template's second pass on tissue maps;
#                       7: anatomy before QSM (T1 brain mask bounds the QSM mask; χ to MNI in the QSM node);
#                       8: brain extraction by a network and a searched affine start; R2* in the QSM node;
#                       9: ringing filtered only where evident; the χ reference; the deep-grey table


@dataclass
class RunSummary:
    done: dict = field(default_factory=dict)  # stage -> [subjects]
    skipped: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)  # stage -> {subject: reason}
    seconds: float = 0.0
    peak_worker_gib: float = float("nan")
    failed_at_ingest: dict = field(default_factory=dict)  # subject -> reason (the ingest's summary names them)

    def text(self) -> str:
        lines = []
        for stage in sorted(set(self.done) | set(self.skipped) | set(self.failed)):
            lines.append(f"{stage}: computed {len(self.done.get(stage, []))}, unchanged "
                         f"{len(self.skipped.get(stage, []))}, failed {len(self.failed.get(stage, {}))}")
            for sub, why in sorted(self.failed.get(stage, {}).items()):
                lines.append(f"  FAILED {sub}: {why}")
        subjects = set().union(*self.done.values(), *self.skipped.values(), *self.failed.values()) \
            if (self.done or self.skipped or self.failed) else set()
        failed = set().union(*[set(v) for v in self.failed.values()]) if self.failed else set()
        subjects.discard("template")
        failed.discard("template")
        at_ingest = set(self.failed_at_ingest) - subjects
        also = f" (and {len(at_ingest)} failed at ingest)" if at_ingest else ""
        lines.append(f"subjects: {len(subjects) - len(failed)} done, {len(failed)} failed{also}; wall time "
                     f"{self.seconds:.1f} s; peak worker memory {self.peak_worker_gib:.2f} GiB")
        return "\n".join(lines)


def stage_seconds(store: CohortStore, stage: str, subjects) -> list[float]:
    """The wall times recorded with ``derived/<sub>/<stage>`` of the subjects that have one."""
    return [rec["seconds"] for s in subjects
            if (rec := store.record(f"derived/{s}/{stage}")) is not None and "seconds" in rec]


def _jsonable(value):
    """``value`` with numpy scalars and tuples turned into what JSON attributes hold."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rounded(seconds: dict) -> dict:
    return {step: round(float(s), 1) for step, s in seconds.items()}


@subject_task
def qsm_stage(subject: str, store_path: str, spec: StudySpec, _after=None) -> tuple[str, str, str | None]:
    """QSM of one subject: ``native/<sub>`` + ``derived/<sub>/anat`` → ``derived/<sub>/qsm``.

    Runs after the anatomy: the T1's brain mask, carried to the GRE grid by
    the coregistration, bounds the QSM mask (``qsm.mask_source: t1``), and the
    anatomy's point map carries χ to MNI (``chi_mni``) in one interpolation.
    """
    store = CohortStore(store_path)
    if _after is not None and _after[0] == "failed":
        return ("failed", subject, _after[2] or f"{subject}: skipped because an earlier stage failed")
    params = spec.qsm
    src = store.record(f"native/{subject}")
    arec = store.record(f"derived/{subject}/anat")
    if src is None:
        return ("failed", subject, f"{subject}: not ingested")
    if arec is None:
        return ("failed", subject, f"{subject}: no anatomy (QSM needs its brain mask and normalisation)")
    digest = digest_params(src["digest"], arec["digest"], params.to_dict(), PIPELINE_VERSION)
    node = f"derived/{subject}/qsm"
    if store.is_current(node, digest):
        return ("skipped", subject, None)
    clock = StepClock()
    try:
        nat = store.open_node(f"native/{subject}")
        anat = store.open_node(f"derived/{subject}/anat")
        affine = np.asarray(nat.attrs["gre_affine"])
        mag, phase = nat["megre_mag"].values, nat["megre_phase"].values
        gre_to_t1 = np.asarray(anat.attrs["gre_to_t1"])
        t1_affine = np.asarray(nat.attrs["t1w_affine"])
        brain = None
        if params.mask_source == "t1":
            brain = t1_brain_on_gre(anat["brain_mask"].values > 0, t1_affine, gre_to_t1,
                                    mag.shape[1:], affine)
        clock.lap("inputs and T1 brain mask")
        chain: dict = {}
        chi, mask = reconstruct_qsm(mag, phase, nat["echo_time"].values, affine,
                                    float(nat.attrs["b0_tesla"]), params, brain=brain, provenance=chain)
        clock.lap("QSM chain")
        template = load_template(spec.mni_voxel_size)
        anat_maps = {"csf": anat["csf"].values, "wm": anat["wm"].values, "gre_to_t1": gre_to_t1,
                     "t1_points": anat["t1_points"].values}
        region = reference_region(params.reference, mask, affine, anat_maps, t1_affine, template)
        chi, offset = referenced(chi, mask, region)
        chain["reference"] = {"region": params.reference, "voxels": int(region.sum()), "offset_ppm": round(offset, 6)}
        chi_mni = chi_to_mni(chi, mask, affine, gre_to_t1, anat_maps["t1_points"])
        clock.lap("χ to MNI")
        r2star = r2star_loglinear(mag, nat["echo_time"].values, mask, noise_sd=background_noise_sd(mag[0]))
        r2star_valid = mask & np.isfinite(r2star)
        r2star_mni = chi_to_mni(np.nan_to_num(r2star), r2star_valid, affine, gre_to_t1, anat_maps["t1_points"])
        chain["r2star_warning"] = r2star_warning(nat["echo_time"].values)
        clock.lap("R2*")
        nuclei = subject_nuclei({"chi": chi, "r2star": r2star}, {"chi": mask, "r2star": r2star_valid}, affine,
                                anat["gm_mod"].values, template, anat_maps["t1_points"], gre_to_t1,
                                params.nuclei_erosion_vox)
        clock.lap("deep-grey table")
    except Exception as exc:  # one subject's failure must not stop the cohort
        return ("failed", subject, f"{subject}: QSM failed: {type(exc).__name__}: {exc}")
    ds = xr.Dataset(
        {"chi": (("i", "j", "k"), chi, {"units": "ppm", "long_name": "magnetic susceptibility",
                                        "reference": params.reference}),
         "qsm_mask": (("i", "j", "k"), mask.astype(np.uint8)),
         "chi_mni": (("x", "y", "z"), chi_mni, {"units": "ppm", "long_name": "magnetic susceptibility in MNI space"}),
         "r2star": (("i", "j", "k"), r2star, {"units": "1/s", "long_name": "R2* (T2* = 1/R2*)"}),
         "r2star_mni": (("x", "y", "z"), r2star_mni, {"units": "1/s", "long_name": "R2* in MNI space"}),
         "nuclei": nuclei},
        coords={ax: (ax, anat[ax].values, {"units": "mm"}) for ax in ("x", "y", "z")},  # the anatomy's MNI grid
        attrs={"subject": subject, "gre_affine": affine_attr(affine), "mni_affine": anat.attrs["mni_affine"],
               "mask_source": params.mask_source, "chain": _jsonable(chain), "seconds": _rounded(clock.steps)},
    )
    store.write_node(node, ds, stage="qsm", digest=digest, params=params.to_dict(), seconds=clock.total())
    return ("written", subject, None)


@subject_task
def anat_stage(subject: str, store_path: str, spec: StudySpec, _after=None, fixed: str = "mni",
               node: str | None = None) -> tuple[str, str, str | None]:
    """Anatomy and normalisation: ``native/<sub>`` → ``derived/<sub>/anat``.

    ``fixed="mni"`` registers to the MNI template; ``fixed="study"`` to the
    study template in ``/template`` (itself on the MNI grid, so the mapping
    to MNI is the registration to it).
    """
    store = CohortStore(store_path)
    if _after is not None and _after[0] == "failed":
        return ("failed", subject, _after[2] or f"{subject}: skipped because an earlier stage failed")
    params = spec.anat
    vs = spec.mni_voxel_size
    node = node or f"derived/{subject}/anat"
    nrec = store.record(f"native/{subject}")
    if nrec is None:
        return ("failed", subject, f"{subject}: not ingested")
    # the QC limits decide whether a subject's normalisation is tried again from another start
    parts = [nrec["digest"], params.to_dict(), vs, PIPELINE_VERSION, asdict(spec.qc)]
    # The second pass of a study template on tissue maps reuses the first
    # pass's segmentation, affine and coregistration: only the tissue SyN runs.
    second_pass = fixed == "study" and params.normalise_on == "tissue"
    init_node = f"derived/{subject}/anat_init"
    if fixed == "study":
        trec = store.record("template")
        if trec is None:
            return ("failed", subject, f"{subject}: no study template (it needs at least two normalised subjects)")
        parts.append(trec["digest"])
        if second_pass:
            irec = store.record(init_node)
            if irec is None:
                return ("failed", subject, f"{subject}: no first normalisation ({init_node}) to start from")
            parts.append(irec["digest"])
    digest = digest_params(*parts)
    if store.is_current(node, digest):
        return ("skipped", subject, None)
    clock = StepClock()
    try:
        nat = store.open_node(f"native/{subject}")  # lazy: each path reads only what it uses
        template = load_template(vs)
        targets = None
        if fixed == "study":
            study = store.open_node("template").load()
            targets = {name: study[name].values for name in ("t1", "gm", "wm")}
        if second_pass:
            r = _second_pass(store, init_node, nat, template, targets, params)
        else:
            r = vars(process_anatomy_checked(nat["t1w"].values, np.asarray(nat.attrs["t1w_affine"]),
                                             nat["megre_mag"][0].values, np.asarray(nat.attrs["gre_affine"]),
                                             template, params, targets=targets,
                                             failures=lambda res: qc_failures(vars(res), spec.qc)))
    except Exception as exc:
        return ("failed", subject, f"{subject}: anatomy failed: {type(exc).__name__}: {exc}")
    grid = template.grid
    native = ("t1_i", "t1_j", "t1_k")
    mni = ("x", "y", "z")
    ds = xr.Dataset(
        {
            "gm": (native, r["gm"]), "wm": (native, r["wm"]), "csf": (native, r["csf"]),
            "brain_mask": (native, np.asarray(r["brain_mask"]).astype(np.uint8)),
            "gm_mod": (mni, r["gm_mod"]), "gm_mod_s": (mni, r["gm_mod_smooth"]),
            "jacobian": (mni, r["jacobian"]), "t1_mni": (mni, r["t1_mni"]),
            "gm_mni": (mni, r["gm_mni"]), "wm_mni": (mni, r["wm_mni"]),
            # the normalisation as a point map: the T1 world point of every MNI voxel
            "t1_points": (("axis", *mni), np.asarray(r["t1_points"], np.float32), {"units": "mm"}),
        },
        coords={**{ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()}, "axis": ["x", "y", "z"]},
        attrs={"subject": subject, "tiv_ml": r["tiv_ml"], "qc_gm_corr": r["qc_gm_corr"], "qc_dice": r["qc_dice"],
               **{k: _finite_or_none(r.get(k)) for k in QC_MEASURES},
               "preparation": r.get("preparation") or {},
               "gre_to_t1": affine_attr(r["gre_to_t1"]), "mni_affine": affine_attr(grid.affine), "fixed": fixed,
               "affine_itk": r["affine_itk"], "seconds": _rounded(r.get("seconds") or {})},
    )
    store.write_node(node, ds, stage="anat", digest=digest,
                     params={**params.to_dict(), "mni_voxel_size": vs, "fixed": fixed}, seconds=clock.total())
    return ("written", subject, None)


def _second_pass(store: CohortStore, init_node: str, nat, template, targets: dict, params: AnatParams) -> dict:
    """The study template's second pass: the first pass's tissue maps registered again to ``targets``."""
    init = store.open_node(init_node).load()
    mni = renormalise_on_tissue(init["gm"].values, init["wm"].values, np.asarray(nat.attrs["t1w_affine"]),
                                init.attrs["affine_itk"], template, targets, params,
                                preparation=init.attrs.get("preparation"))
    return {**mni, "gm": init["gm"].values, "wm": init["wm"].values, "csf": init["csf"].values,
            "brain_mask": init["brain_mask"].values,
            # the T1 was prepared (cut, resampled) once, by the first pass
            "preparation": dict(init.attrs.get("preparation") or {}),
            # the T1 is not registered again: its warped image stays the first pass's
            "t1_mni": init["t1_mni"].values, "tiv_ml": float(init.attrs["tiv_ml"]),
            "gre_to_t1": np.asarray(init.attrs["gre_to_t1"]), "affine_itk": init.attrs["affine_itk"],
            # the native segmentation and the T1's normalisation are the first pass's, and so is their QC
            **{k: init.attrs.get(k) for k in QC_MEASURES}}


#: Fewer residual degrees of freedom than this make the smoothness estimate from the
#: residuals (and with it the RFT p-values) too variable to report without a warning.
MIN_RELIABLE_DF = 10

#: anatomy measures stored with every subject for quality control (see :mod:`.qc`)
QC_MEASURES = ("qc_t1_corr", "qc_brain_top_gap_mm", "gm_ml", "wm_ml", "csf_ml")


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


def _finite_or_none(v):
    return float(v) if v is not None and np.isfinite(v) else None


@subject_task
def template_stage(store_path: str, spec: StudySpec, subjects: list[str], _after=()) -> tuple[str, str, str | None]:
    """The study template (DARTEL's idea, on ANTs): the mean of every subject's
    bias-corrected T1 brain (intensity-normalised per subject) and of its GM
    and WM posteriors after its first normalisation to MNI.  It lives on the
    MNI grid, so subjects registered to it are in MNI space; a reduce over the
    per-subject map."""
    store = CohortStore(store_path)
    ok = [s for s, res in zip(subjects, _after) if res[0] != "failed"]
    if len(ok) < 2:
        return ("failed", "template", f"study template needs at least two normalised subjects, got {len(ok)}")
    digest = digest_params([store.record(f"derived/{s}/anat_init")["digest"] for s in ok], PIPELINE_VERSION)
    if store.is_current("template", digest):
        return ("skipped", "template", None)
    names = {"t1": "t1_mni", "gm": "gm_mni", "wm": "wm_mni"}
    total = dict.fromkeys(names, 0.0)
    for s in ok:  # running sums: memory of a few volumes whatever the cohort size
        init = store.open_node(f"derived/{s}/anat_init")
        for name, var in names.items():
            total[name] = total[name] + init[var].values.astype(np.float64)
    vs = spec.mni_voxel_size
    grid = load_template(vs).grid
    means = {name: (("x", "y", "z"), (total[name] / len(ok)).astype(np.float32)) for name in names}
    ds = xr.Dataset(means, coords={ax: (ax, v, {"units": "mm"}) for ax, v in grid.coords().items()},
                    attrs={"subjects": ok, "mni_affine": affine_attr(grid.affine)})
    store.write_node("template", ds, stage="template", digest=digest, params={"n_subjects": len(ok)})
    return ("written", "template", None)


def run_participants(store_path: str | Path, spec: StudySpec, client, subjects: list[str] | None = None,
                     progress: bool = True) -> RunSummary:
    """QSM then anatomy for every ingested subject, one task per subject per stage.

    Holds the store's lock: a second run on the same store is refused
    (:class:`cohort.store.StoreLocked`) rather than interleaved.
    """
    spec = complete_spec(spec)
    with CohortStore(store_path).lock("participant level"):
        return _run_participants(store_path, spec, client, subjects, progress)


def _run_participants(store_path, spec, client, subjects, progress) -> RunSummary:
    t0 = time.perf_counter()
    store = CohortStore(store_path)
    store.clean_staging()
    subjects = store.children("native") if subjects is None else subjects
    summary = RunSummary()
    path = str(store.path)
    extra = []
    if spec.study_template:
        # map (normalise to MNI) -> reduce (mean T1 = study template) -> map (normalise to the template)
        init = {s: client.submit(anat_stage, s, path, spec, None, "mni", f"derived/{s}/anat_init",
                                 key=f"anat_init-{s}", pure=False) for s in subjects}
        tpl = client.submit(template_stage, path, spec, subjects, [init[s] for s in subjects],
                            key="template-study", pure=False)
        anat_futs = {s: client.submit(anat_stage, s, path, spec, tpl, "study", key=f"anat-{s}", pure=False)
                     for s in subjects}
        extra = list(init.values()) + [tpl]
    else:
        anat_futs = {s: client.submit(anat_stage, s, path, spec, key=f"anat-{s}", pure=False) for s in subjects}
    qsm_futs = {s: client.submit(qsm_stage, s, path, spec, anat_futs[s], key=f"qsm-{s}", pure=False)
                for s in subjects}
    stage_of = {f.key: "qsm" for f in qsm_futs.values()} | {f.key: "anat" for f in anat_futs.values()}
    stage_of |= {f.key: f.key.split("-", 1)[0] for f in extra}
    for fut in track(extra + list(anat_futs.values()) + list(qsm_futs.values()), "participant", enabled=progress,
                     stage_of=stage_of):
        stage = stage_of[fut.key]
        try:
            status, sub, reason = fut.result()
        except Exception as exc:
            sub = fut.key.split("-", 1)[1]
            status, reason = "failed", f"{sub}: {stage} task lost: {type(exc).__name__}: {exc}"
        if status == "written":
            summary.done.setdefault(stage, []).append(sub)
        elif status == "skipped":
            summary.skipped.setdefault(stage, []).append(sub)
        else:
            summary.failed.setdefault(stage, {})[sub] = reason
    for stage in ("anat_init", "template", "anat", "qsm"):
        if stage not in summary.failed and stage in ("anat_init", "template") and stage not in stage_of.values():
            continue
        previous = store.failures().get(stage, {})
        failures = {k: v for k, v in previous.items() if k not in subjects}
        failures.update(summary.failed.get(stage, {}))
        store.set_failures(stage, failures)
    store.consolidate()
    summary.seconds = time.perf_counter() - t0
    summary.peak_worker_gib = peak_worker_memory(client)
    return summary


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


def run_group(store_path: str | Path, spec: StudySpec, out_dir: str | Path, client=None) -> dict:
    """Stack, fit every contrast of the spec, write maps, tables, ROI values and derivatives.

    Returns a dict with the subjects used, those excluded with reasons, and
    per contrast the whole-brain and SVC tables.  Holds the store's lock.
    With a ``client``, the permutations run as tasks on its workers (the
    same results, whatever the number of workers).
    """
    spec = complete_spec(spec)
    with CohortStore(store_path).lock("group level"):
        return _run_group(store_path, spec, out_dir, client)


def _run_group(store_path, spec: StudySpec, out_dir, client=None) -> dict:

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
    results = {"subjects": list(design.subjects), "excluded": excluded, "contrasts": {}, "warnings": []}
    df = len(design.subjects) - np.linalg.matrix_rank(design.X)
    if df < MIN_RELIABLE_DF:
        results["warnings"].append(
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
        results["warnings"].extend(_implausible_smoothness(c.name, res.fwhm_vox * vs, template.grid))
        results["contrasts"][c.name] = {"table": res.table, "svc": res.svc, "fwhm_mm": (res.fwhm_vox * vs).tolist(),
                                          "u": res.u, "df": res.df, "map": c.map}
    (out / "tables" / "excluded.json").write_text(json.dumps(excluded, indent=2))
    used = design_table.loc[list(design.subjects)]
    write_csv(used, out / "tables" / "subjects.csv", index_label="subject")
    results["findings"] = _findings(store, mni.isel(subject=order), contrast_results, spec, template, used, out,
                                    digest)
    results["nuclei"] = _nuclei_table(store, list(design.subjects), used, out, digest)
    write_dataset_description(out)
    export_subjects(store, store.children("derived"), out, vs, client)
    (out / "spec.yaml").write_text(spec.to_yaml())
    (out / "group" / "run.json").write_text(json.dumps({"store": str(store.path), "pipeline_version": PIPELINE_VERSION,
                                                        "warnings": results["warnings"]}))
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
        res.table["cluster_p_fwe_perm"] = [float(cluster_p[_peak_voxel(grid, r)]) for _, r in res.table.iterrows()]
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
    from ferritin.stats.permutation import permutation_cluster

    tfce_dh = 0.1 if inf.tfce else None
    perm = permutation_cluster(Y, design.X, _contrast_weights(design, c), res.mask, n_perm=n_perm,
                               seed=inf.permutation_seed, cluster_forming_t=res.u, tfce_dh=tfce_dh, client=client)
    rows = []
    T = np.where(res.mask, perm.t_obs, -np.inf)
    for label in range(1, len(perm.cluster_mass)):
        members = perm.cluster_labels == label
        idx = np.unravel_index(np.argmax(np.where(members, T, -np.inf)), T.shape)
        xyz = grid.voxel_to_world(idx)[0]
        row = {"cluster": label, "x": xyz[0], "y": xyz[1], "z": xyz[2], "T": float(T[idx]),
               "voxels": int(members.sum()), "mass": float(perm.cluster_mass[label]),
               "p_fwe_cluster_mass": float(perm.cluster_p_fwe[label]), "p_fwe_max_t": float(perm.p_fwe[idx]),
               "label": names.get(int(template.atlas[idx]), "")}
        if perm.tfce_p_fwe is not None:
            row["p_fwe_tfce"] = float(np.nanmin(perm.tfce_p_fwe[members]))
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("mass", ascending=False).reset_index(drop=True)
    cluster_p = np.full(perm.cluster_labels.shape, np.nan, np.float32)
    inside = perm.cluster_labels > 0
    cluster_p[inside] = perm.cluster_p_fwe[perm.cluster_labels[inside]]
    maps = {"p_fwe_max_t": (("x", "y", "z"), perm.p_fwe.astype(np.float32)),
            "p_fwe_cluster_mass": (("x", "y", "z"), cluster_p)}
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
