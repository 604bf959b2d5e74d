"""The anatomy on real T1w heads from other scanners (tests/data/real-t1, each with its LICENSE).

No ground truth: plausibility that a wrong result fails.  For the adults, QC passes, TIV and the
GM share lie in adult ranges and the brain lands on the template's brain after normalisation;
the 3-year-old's brain is found (a small head's TIV) and segmented.  The anatomy runs at a 2 mm
working voxel size on a 3 mm MNI grid to keep the suite short (benchmarks/real_heads.py runs them
at full resolution; docs/validation.md has those figures and the pictures).
"""

import numpy as np
import pytest
from heads import ADULTS, CHILD, load_t1, moved_and_resampled, moved_in_field_of_view

from ferritin.cohort.templates import load_template
from ferritin.engine.anat import AnatParams, process_anatomy, sample_at
from ferritin.engine.qc import QCCriteria, qc_failures

pytestmark = pytest.mark.slow

FAST = AnatParams(working_voxel_mm=2.0)


@pytest.fixture(scope="module")
def template():
    return load_template(3.0)


def _anatomy(t1, affine, template):
    # these heads come without a GRE: a coarse copy of the T1 stands in for the coregistration
    return process_anatomy(t1, affine, t1[::4, ::4, ::4], affine @ np.diag([4, 4, 4, 1]), template, FAST)


def _measures(r) -> dict:
    return {"tiv_ml": r.tiv_ml, "gm_ml": r.gm_ml, "qc_gm_corr": r.qc_gm_corr, "qc_t1_corr": r.qc_t1_corr,
            "qc_brain_top_gap_mm": r.qc_brain_top_gap_mm}


def _brain_dice_in_mni(r, affine, template) -> float:
    """Dice of the subject's brain mask, carried to MNI by its normalisation, with the template's brain mask."""
    warped = sample_at(r.brain_mask.astype(np.float32), affine, r.t1_points, order=1, cval=0.0) > 0.5
    tb = template.brain_mask
    return float(2 * (warped & tb).sum() / (warped.sum() + tb.sum()))


@pytest.fixture(scope="module")
def results(template):
    out = {}
    for name in (*ADULTS, CHILD):
        t1, affine = load_t1(name)
        out[name] = (t1, affine, _anatomy(t1, affine, template))
    return out


@pytest.mark.parametrize("name", ADULTS)
def test_an_adult_head_passes_qc_with_adult_volumes(results, template, name):
    _, affine, r = results[name]
    assert qc_failures(_measures(r), QCCriteria()) == []
    assert 1150 <= r.tiv_ml <= 2100
    assert 0.35 <= r.gm_ml / r.tiv_ml <= 0.50
    assert _brain_dice_in_mni(r, affine, template) >= 0.90
    assert r.preparation["brain_extraction"]["method"].startswith("deepbet")
    assert "fallback" not in r.preparation["brain_extraction"]


def test_the_childs_brain_is_found_and_segmented(results, template):
    """A 3-year-old: the brain, not the scalp (TIV of a small head), tissue in plausible shares, and on the
    template's brain after normalisation.  Adult QC ranges may exclude it, and then they say which."""
    _, affine, r = results[CHILD]
    assert 900 <= r.tiv_ml <= 1500
    assert 0.30 <= r.gm_ml / r.tiv_ml <= 0.60
    assert 0.20 <= r.wm_ml / r.tiv_ml <= 0.50
    assert _brain_dice_in_mni(r, affine, template) >= 0.85
    for failure in qc_failures(_measures(r), QCCriteria()):
        assert any(word in failure for word in ("TIV", "GM share"))


def test_volumes_do_not_depend_on_where_the_head_sat(results, template):
    """The Prisma head 20 mm elsewhere in the field of view and the grid turned by up to 15° (no
    interpolation); test_real_subject moves the Philips volunteer."""
    t1, affine, r = results[ADULTS[0]]
    moved, moved_affine = moved_in_field_of_view(t1, affine, (20.0, -12.0, 10.0), (15.0, -10.0, 8.0))
    again = _anatomy(moved, moved_affine, template)
    assert again.tiv_ml == pytest.approx(r.tiv_ml, rel=0.02)
    assert again.gm_ml == pytest.approx(r.gm_ml, rel=0.02)


def test_volumes_do_not_depend_on_the_voxel_grid(results, template):
    """The Philips 0.7 mm head resampled to 0.5 × 1 × 1 mm."""
    t1, affine, r = results[ADULTS[1]]
    again = _anatomy(*moved_and_resampled(t1, affine, (0.5, 1.0, 1.0)), template)
    assert again.tiv_ml == pytest.approx(r.tiv_ml, rel=0.02)
    assert again.gm_ml == pytest.approx(r.gm_ml, rel=0.02)
