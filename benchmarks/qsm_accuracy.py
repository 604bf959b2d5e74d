"""QSM accuracy on one simulated subject: NRMSE from the true local field and from the full chain.

Run by hand:  .venv/bin/python benchmarks/qsm_accuracy.py VOXEL_MM   (e.g. 2 or 3)
NRMSE = 100 * ||chi - chi_true|| / ||chi_true|| inside the mask, both demeaned there.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import time
import numpy as np
from cohort.simulate import preset, sample_participants, simulate_subject
from engine.qsm.chain import reconstruct_qsm, QSMParams
from engine.qsm.inversion import reference_to_mean, tkd, tv_admm
from engine.qsm.dipole import b0_direction
vs_mm = float(sys.argv[1])
spec = preset("tiny", voxel_size=vs_mm, n_echoes=int(sys.argv[2]) if len(sys.argv) > 2 else 6)
df = sample_participants(spec)
t = simulate_subject(spec, df.iloc[0].to_dict(), 0)
tm = t.brain_mask_native.astype(bool)
from engine.qsm.inversion import ilsqr, star_qsm
from engine.qsm.metrics import hfen, nrmse as _nrmse
def nrmse(chi, m):
    return _nrmse(chi, t.chi_native, m)
b = b0_direction(t.gre_affine); vs=(vs_mm,)*3
methods = {"tkd": tkd, "tv": tv_admm, "star": star_qsm, "ilsqr": ilsqr}
for name, fn in methods.items():
    est = fn(t.local_field_ppm, tm, vs, b)
    print(vs_mm, "mm", name, "from true local field NRMSE %.1f HFEN %.1f" % (nrmse(est, tm), hfen(est, t.chi_native, tm)))
for inv in methods:
    t0 = time.time(); chi, m = reconstruct_qsm(t.mag, t.phase, t.echo_times, t.gre_affine, spec.b0, QSMParams(inversion=inv))
    mm = m & tm
    print(vs_mm, "mm", inv, "full chain NRMSE %.1f HFEN %.1f" % (nrmse(chi, mm), hfen(chi, t.chi_native, mm)),
          "mask voxels", mm.sum(), "of", tm.sum(), "%.1fs" % (time.time()-t0))

# Deep grey matter: mean chi per nucleus (both demeaned over the chain's mask)
from cohort.simulate import _world_coords
from cohort.templates import load_template, atlas_labels
from scipy import ndimage
tpl = load_template(vs_mm)
mni_pts = t.placement.to_mni(_world_coords(t.mag.shape[1:], t.gre_affine), gre=True)
inv = np.linalg.inv(tpl.grid.affine)
ijk = np.einsum("ab,b...->a...", inv[:3, :3], mni_pts) + inv[:3, 3].reshape(3, 1, 1, 1)
labels = ndimage.map_coordinates(tpl.atlas, ijk, order=0, mode="constant", cval=0)
names = atlas_labels()["name"].to_dict()
chi, m = reconstruct_qsm(t.mag, t.phase, t.echo_times, t.gre_affine, spec.b0, QSMParams(inversion="tv"))
mm = m & tm
est = reference_to_mean(chi, mm); tru = reference_to_mean(t.chi_native, mm)
errs = []
for code, name in names.items():
    if not any(k in name for k in ("Thalamus", "Putamen", "Caudate", "Pallidum")):
        continue
    sel = (labels == code) & mm
    if sel.sum() < 5:
        continue
    errs.append(est[sel].mean() - tru[sel].mean())
    print(f"  {name:12s} true {tru[sel].mean():+.4f}  est {est[sel].mean():+.4f} ppm  ({sel.sum()} voxels)")
print(f"{vs_mm} mm TV chain: deep-grey mean chi error: mean |err| {np.mean(np.abs(errs)):.4f} ppm, max {np.max(np.abs(errs)):.4f} ppm")
