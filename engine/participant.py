"""The participant level: per-subject stages mapped on Dask, results written to the store as they finish.

One Dask task per subject per stage, each with a completion record::

    native/<sub> ──anat──▶ derived/<sub>/anat ──qsm──▶ derived/<sub>/qsm

The anatomy comes first: its brain mask bounds the QSM mask and its point map
carries χ to MNI (``derived/<sub>/qsm`` holds χ native and in MNI space).  With
a study template the anatomy runs twice around :mod:`.template`'s reduce.
A re-run skips every node whose record matches its inputs and parameters; a
subject whose stage fails is recorded in ``/log`` with the reason.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from ferritin.cohort import outcome
from ferritin.cohort.outcome import Status
from ferritin.cohort.progress import peak_worker_memory, track
from ferritin.cohort.store import CohortStore, affine_attr, digest_params
from ferritin.cohort.templates import load_template

from .anat import AnatParams, chi_to_mni, process_anatomy_checked, renormalise_on_tissue, t1_brain_on_gre
from .chi_reference import reference_region, referenced
from .cluster import subject_task
from .nuclei import subject_nuclei
from .qc import qc_failures
from .qsm.chain import reconstruct_qsm
from .qsm.relaxometry import background_noise_sd, r2star_loglinear, r2star_warning
from .records import PIPELINE_VERSION, QC_MEASURES, finite_or_none, jsonable, rounded_seconds
from .spec import StudySpec, complete_spec
from .template import template_stage
from .timing import StepClock

__all__ = ["RunSummary", "qsm_stage", "anat_stage", "run_participants"]

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


@subject_task
def qsm_stage(subject: str, store_path: str, spec: StudySpec, _after=None) -> outcome.Outcome:
    """QSM of one subject: ``native/<sub>`` + ``derived/<sub>/anat`` → ``derived/<sub>/qsm``.

    Runs after the anatomy: the T1's brain mask, carried to the GRE grid by
    the coregistration, bounds the QSM mask (``qsm.mask_source: t1``), and the
    anatomy's point map carries χ to MNI (``chi_mni``) in one interpolation.
    """
    store = CohortStore(store_path)
    if _after is not None and _after.status == Status.FAILED:
        return outcome.failed(subject, _after.reason or f"{subject}: skipped because an earlier stage failed")
    params = spec.qsm
    src = store.record(f"native/{subject}")
    arec = store.record(f"derived/{subject}/anat")
    if src is None:
        return outcome.failed(subject, f"{subject}: not ingested")
    if arec is None:
        return outcome.failed(subject, f"{subject}: no anatomy (QSM needs its brain mask and normalisation)")
    digest = digest_params(src["digest"], arec["digest"], params.to_dict(), PIPELINE_VERSION)
    node = f"derived/{subject}/qsm"
    if store.is_current(node, digest):
        return outcome.skipped(subject)
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
        return outcome.failed(subject, f"{subject}: QSM failed: {type(exc).__name__}: {exc}")
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
               "mask_source": params.mask_source, "chain": jsonable(chain), "seconds": rounded_seconds(clock.steps)},
    )
    store.write_node(node, ds, stage="qsm", digest=digest, params=params.to_dict(), seconds=clock.total())
    return outcome.written(subject)


@subject_task
def anat_stage(subject: str, store_path: str, spec: StudySpec, _after=None, fixed: str = "mni",
               node: str | None = None) -> outcome.Outcome:
    """Anatomy and normalisation: ``native/<sub>`` → ``derived/<sub>/anat``.

    ``fixed="mni"`` registers to the MNI template; ``fixed="study"`` to the
    study template in ``/template`` (itself on the MNI grid, so the mapping
    to MNI is the registration to it).
    """
    store = CohortStore(store_path)
    if _after is not None and _after.status == Status.FAILED:
        return outcome.failed(subject, _after.reason or f"{subject}: skipped because an earlier stage failed")
    params = spec.anat
    vs = spec.mni_voxel_size
    node = node or f"derived/{subject}/anat"
    nrec = store.record(f"native/{subject}")
    if nrec is None:
        return outcome.failed(subject, f"{subject}: not ingested")
    # the QC limits decide whether a subject's normalisation is tried again from another start
    parts = [nrec["digest"], params.to_dict(), vs, PIPELINE_VERSION, asdict(spec.qc)]
    # The second pass of a study template on tissue maps reuses the first
    # pass's segmentation, affine and coregistration: only the tissue SyN runs.
    second_pass = fixed == "study" and params.normalise_on == "tissue"
    init_node = f"derived/{subject}/anat_init"
    if fixed == "study":
        trec = store.record("template")
        if trec is None:
            return outcome.failed(subject, f"{subject}: no study template (it needs at least two normalised subjects)")
        parts.append(trec["digest"])
        if second_pass:
            irec = store.record(init_node)
            if irec is None:
                return outcome.failed(subject, f"{subject}: no first normalisation ({init_node}) to start from")
            parts.append(irec["digest"])
    digest = digest_params(*parts)
    if store.is_current(node, digest):
        return outcome.skipped(subject)
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
        return outcome.failed(subject, f"{subject}: anatomy failed: {type(exc).__name__}: {exc}")
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
               **{k: finite_or_none(r.get(k)) for k in QC_MEASURES},
               "preparation": r.get("preparation") or {},
               "gre_to_t1": affine_attr(r["gre_to_t1"]), "mni_affine": affine_attr(grid.affine), "fixed": fixed,
               "affine_itk": r["affine_itk"], "seconds": rounded_seconds(r.get("seconds") or {})},
    )
    store.write_node(node, ds, stage="anat", digest=digest,
                     params={**params.to_dict(), "mni_voxel_size": vs, "fixed": fixed}, seconds=clock.total())
    return outcome.written(subject)


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
            status, reason = Status.FAILED, f"{sub}: {stage} task lost: {type(exc).__name__}: {exc}"
        if status == Status.WRITTEN:
            summary.done.setdefault(stage, []).append(sub)
        elif status == Status.SKIPPED:
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
