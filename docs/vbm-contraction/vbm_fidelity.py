"""How faithfully VBM measures regional GM volume, on a finished run of a simulated cohort.

Run by hand, after ``ferritin demo --out DIR`` (or any run of a simulated cohort):

    .venv/bin/python docs/vbm-contraction/vbm_fidelity.py DIR

For every planted effect (its core: the effect's atlas region within its radius
of the planted peak) and every ROI the run built, it sums GM over the region per
subject three ways:

* truth: the subject's true native GM over the true pre-image of the region
  (``derivatives/ground-truth``: true GM on the T1w grid and the true T1w → MNI
  point map) — what Jacobian-modulated VBM should measure;
* oracle registration: the pipeline's native GM segmentation over the same
  true pre-image — the error of the segmentation alone;
* pipeline: the pipeline's modulated GM over the region in MNI space —
  segmentation and normalisation together.

and the region's native volume two ways: the true pre-image's, and the
normalisation's (its Jacobian determinant summed over the region), with the
estimate's mean ratio to the truth per group — a normalisation that shrinks or
grows a region in one group more than in the other hides a planted change.

It prints, per region, the ALS − NC t of each (ANCOVA with TIV, as the study's
post-hoc GM test) and each one's correlation with the truth across subjects.
Where the pipeline's t falls far short of the truth's, the oracle column says
whether segmentation or normalisation lost it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ferritin.cohort.simulate import Effect, effect_maps  # noqa: E402
from ferritin.cohort.store import CohortStore  # noqa: E402
from ferritin.cohort.templates import load_template  # noqa: E402


def regions(out: Path, store: CohortStore, template) -> dict[str, np.ndarray]:
    """Effect cores from the simulation record, plus the ROIs of the run (MNI grid masks)."""
    sim = json.loads((out / "bids" / "derivatives" / "ground-truth" / "simulation.json").read_text())
    fields = set(Effect.__dataclass_fields__)
    effects = [Effect(**{k: (tuple(v) if k == "peak_mni" else v) for k, v in e.items() if k in fields})
               for e in sim.get("effects", [])]
    out_regions = {f"core {name}": w > 0.5 for name, w in effect_maps(template, effects).items()}
    try:
        roi = store.open_node("roi").load()
    except KeyError:
        return out_regions
    for name in roi["roi"].values:
        out_regions[f"ROI {name}"] = roi["roi_mask"].sel(roi=name).values.astype(bool)
    return out_regions


def group_t(frame: pd.DataFrame, column: str, patients: str, controls: str) -> float:
    import statsmodels.formula.api as smf

    fit = smf.ols(f"{column} ~ C(group, Treatment({controls!r})) + tiv", frame).fit()
    term = [k for k in fit.params.index if k.startswith("C(group") and patients in k]
    return float(fit.tvalues[term[0]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder of the run (holds bids/ and cohort.zarr)")
    args = ap.parse_args()
    gt = args.out / "bids" / "derivatives" / "ground-truth"
    participants = pd.read_csv(args.out / "bids" / "participants.tsv", sep="\t").set_index("participant_id")
    store = CohortStore(args.out / "cohort.zarr")
    first = store.open_node(f"derived/{participants.index[0]}/anat")
    mni_affine = np.asarray(first.attrs["mni_affine"], dtype=float)
    template = load_template(float(mni_affine[0, 0]))
    masks = regions(args.out, store, template)
    inv = np.linalg.inv(mni_affine)
    mni_voxel_ml = float(np.prod(nib.affines.voxel_sizes(mni_affine))) / 1000.0
    rows = []
    for sub in participants.index:
        anat = store.open_node(f"derived/{sub}/anat")
        true_gm_img = nib.load(gt / sub / f"{sub}_space-T1w_label-GM_probseg.nii.gz")
        true_gm = np.asarray(true_gm_img.dataobj, dtype=np.float64)
        t1_voxel_ml = float(np.prod(nib.affines.voxel_sizes(true_gm_img.affine))) / 1000.0
        points = np.asarray(nib.load(gt / sub / f"{sub}_from-T1w_to-MNI152NLin2009cSym_mode-points_xfm.nii.gz")
                            .dataobj, dtype=np.float64)
        if points.shape[-1] == 3:
            points = np.moveaxis(points, -1, 0)
        ijk = np.round(np.einsum("ab,b...->a...", inv[:3, :3], points) + inv[:3, 3].reshape(3, 1, 1, 1)).astype(int)
        inside = np.all([(ijk[c] >= 0) & (ijk[c] < template.grid.shape[c]) for c in range(3)], axis=0)
        est_gm = anat["gm"].values.astype(np.float64)
        gm_mod = anat["gm_mod"].values.astype(np.float64)
        jac = anat["jacobian"].values.astype(np.float64)
        row = {"subject": sub, "group": participants.loc[sub, "group"], "tiv": float(anat.attrs["tiv_ml"])}
        for name, mask in masks.items():
            member = np.zeros(true_gm.shape, bool)
            member[inside] = mask[ijk[0][inside], ijk[1][inside], ijk[2][inside]]
            row[(name, "truth")] = true_gm[member].sum() * t1_voxel_ml
            row[(name, "oracle registration")] = est_gm[member].sum() * t1_voxel_ml
            row[(name, "pipeline")] = gm_mod[mask].sum() * mni_voxel_ml
            row[(name, "true volume")] = member.sum() * t1_voxel_ml
            row[(name, "normalisation volume")] = np.nansum(jac[mask]) * mni_voxel_ml
        rows.append(row)
    frame = pd.DataFrame(rows)
    groups = list(dict.fromkeys(participants["group"]))
    patients, controls = groups[0], groups[1]
    print(f"{len(frame)} subjects; ALS - NC t (ANCOVA with TIV) and r with the truth across subjects")
    for name in masks:
        parts = [f"{name} ({int(masks[name].sum())} voxels):"]
        for kind in ("truth", "oracle registration", "pipeline"):
            f = frame[["group", "tiv"]].assign(v=frame[(name, kind)])
            r = float(np.corrcoef(f["v"], frame[(name, "truth")])[0, 1])
            parts.append(f"{kind} {f['v'].mean():.2f} ml, t {group_t(f, 'v', patients, controls):+.2f}, r {r:.2f}")
        print("  " + " | ".join(parts))
        true_vol, est_vol = frame[(name, "true volume")], frame[(name, "normalisation volume")]
        ratio = (est_vol / true_vol).groupby(frame["group"]).mean()
        vol_t = [group_t(frame[["group", "tiv"]].assign(v=v), "v", patients, controls) for v in (true_vol, est_vol)]
        print(f"    volume: truth {true_vol.mean():.2f} ml, t {vol_t[0]:+.2f} | normalisation {est_vol.mean():.2f} ml, "
              f"t {vol_t[1]:+.2f}, r {float(np.corrcoef(est_vol, true_vol)[0, 1]):.2f} | normalisation / truth: "
              + ", ".join(f"{g} {ratio[g]:.3f}" for g in groups))


if __name__ == "__main__":
    main()
