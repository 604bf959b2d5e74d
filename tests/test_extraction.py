"""Brain extraction by deepbet's networks (ONNX): against the simulator's truth, invariant to how the
voxels are ordered, refusing what is not an image, and the anatomy's fallback when no brain is found."""

import numpy as np
import pytest

from ferritin.cohort.simulate import preset, sample_participants, simulate_subject
from ferritin.engine.anat.extraction import EXTRACTION_METHOD, extract_brain


@pytest.fixture(scope="module")
def head():
    spec = preset("tiny", n_echoes=2, seed=5)
    return simulate_subject(spec, sample_participants(spec).iloc[0].to_dict(), 0)


@pytest.fixture(scope="module")
def found(head):
    return extract_brain(head.t1w, head.t1w_affine)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_finds_the_simulated_brain(head, found):
    """The brain (tissue and CSF inside the skull) of a head the network never saw, at 3 mm."""
    truth = head.gm_t1 + head.wm_t1 + head.csf_t1 > 0.5
    assert _dice(found.mask, truth) > 0.95
    assert found.volume_ml(head.t1w_affine) == pytest.approx(head.tiv_ml, rel=0.05)
    assert found.mask.dtype == bool and found.mask.shape == head.t1w.shape
    assert found.method.startswith(EXTRACTION_METHOD) and "onnxruntime" in found.method


def test_the_order_of_the_voxels_does_not_matter(head, found):
    """The same image stored with its axes swapped and flipped (the affine says so) gives the same mask."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = head.t1w.shape[0] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    index_to_old = flip @ swap  # new voxel (j, i, k) -> old voxel (n - 1 - i, j, k)
    stored = np.transpose(head.t1w[::-1], (1, 0, 2))
    again = extract_brain(stored, head.t1w_affine @ index_to_old)
    assert np.array_equal(np.transpose(again.mask, (1, 0, 2))[::-1], found.mask)


def test_is_repeatable(head, found):
    assert np.array_equal(extract_brain(head.t1w, head.t1w_affine).probability, found.probability)


@pytest.mark.parametrize("image, match", [(np.zeros((10, 10)), "3-D"), (np.zeros((4, 40, 40)), "8 voxels")])
def test_refuses_what_is_not_a_volume(image, match):
    with pytest.raises(ValueError, match=match):
        extract_brain(image, np.eye(4))


def test_refuses_a_threshold_outside_0_1(head):
    with pytest.raises(ValueError, match="threshold"):
        extract_brain(head.t1w, head.t1w_affine, threshold=1.5)


@pytest.mark.slow
def test_noise_is_no_brain_and_the_anatomy_falls_back():
    """An image of noise: the network still draws a confident blob, but placed by its affine it looks nothing
    like the template's brain, so the anatomy falls back to the template's mask and says so."""
    from ferritin.cohort.templates import load_template
    from ferritin.engine.anat import TEMPLATE_EXTRACTION, AnatParams, process_anatomy

    rng = np.random.default_rng(0)
    noise = rng.random((48, 48, 48)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -96.0
    fast = AnatParams(syn_iterations=(5, 0, 0), tissue_iterations=(5, 0, 0), seg_iterations=1)
    r = process_anatomy(noise, affine, noise[::2, ::2, ::2], affine @ np.diag([2, 2, 2, 1]), load_template(3.0), fast)
    record = r.preparation["brain_extraction"]
    assert record["method"] == TEMPLATE_EXTRACTION
    assert "correlates" in record["fallback"] and record["affine_t1_correlation"] < 0.4
