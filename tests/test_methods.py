"""The report's methods text describes what ran: every step's parameter changes the text with it."""

import pytest

from ferritin.engine.anat import AnatParams
from ferritin.engine.qsm.chain import QSMParams
from ferritin.engine.report.methods import methods_text
from ferritin.engine.spec import load_spec

CHAINS = [{"tapered_axes": [0, 1], "tv_lambda_effective": 5e-4, "r2star_warning": None},
          {"tapered_axes": [], "tv_lambda_effective": 1e-4, "r2star_warning": None}]


def _text(spec_changes=None, qsm=None, anat=None, chains=CHAINS, n_used=20, n_excluded=1) -> str:
    spec = load_spec().to_dict()
    for key, value in (spec_changes or {}).items():
        section, _, field = key.partition(".")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    spec = load_spec(_yaml(spec))
    q = {**spec.qsm.to_dict(), **(qsm or {})}
    a = {**spec.anat.to_dict(), **(anat or {})}
    return "\n\n".join(methods_text(spec, q, a, n_used, n_excluded, chains))


def _yaml(spec: dict):
    import tempfile

    import yaml

    path = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(spec, path)
    path.close()
    return path.name


@pytest.fixture(scope="module")
def base():
    return _text()


QSM_CHANGES = [
    ({"mask_source": "magnitude"}, None, "within the T1's brain mask"),
    ({"mask_detach_mm": 7.0}, "7 mm erosion", None),
    ({"ringing": "none"}, "No filter against truncation", None),
    ({"ringing": "taper", "kspace_taper": 0.2}, "along every axis with a Tukey window over the outer 20 %", None),
    ({"ringing": "unring"}, "local sub-voxel shifts along each axis (Kellner", None),
    ({"kspace_taper": 0.15}, "outer 15 % of k-space", None),
    ({"combine": "laplacian-wls"}, "weighted least-squares fit of the frequency", None),
    ({"unwrapper": "laplacian"}, "Laplacian spatial unwrapping", None),
    ({"vsharp_max_radius_mm": 9.0}, "spheres from 9 mm", None),
    ({"vsharp_threshold": 0.03}, "truncation 0.03", None),
    ({"quality_iterations": 0}, None, "local-field outliers"),
    ({"inversion": "tkd", "tkd_threshold": 0.2}, "truncated k-space division (threshold 0.2)", None),
    ({"inversion": "star"}, "STAR-QSM", None),
    ({"inversion": "ilsqr"}, "iLSQR", None),
    ({"tv_lambda": 3e-4}, "λ = 0.0003", None),
    ({"tv_iterations": 35}, "35 iterations", None),
    ({"reference_noise_ppm": None}, "fixed)", "σ /"),
    ({"reference": "csf"}, "CSF of the lateral ventricles", None),
    ({"reference": "wm"}, "mean of the white matter", None),
    ({"nuclei_erosion_vox": 2}, "eroded by 2 voxels", None),
]


@pytest.mark.parametrize("change, appears, disappears", QSM_CHANGES)
def test_each_qsm_parameter_changes_the_text(base, change, appears, disappears):
    text = _text({f"qsm.{k}": v for k, v in change.items()})
    assert text != base
    if appears:
        assert appears in text and appears not in base
    if disappears:
        assert disappears in base and disappears not in text


ANAT_CHANGES = [
    ({"brain_extraction": "template"}, "template's brain mask carried back through an affine"),
    ({"affine_start": "centre"}, "started at the estimated brain centre"),
    ({"search_degrees": 20.0}, "±20°"),
    ({"n4_shrink": 2}, "shrink 2"),
    ({"seg_iterations": 8}, "8 EM iterations"),
    ({"seg_prior_weight": 0.2}, "prior weight 0.2"),
    ({"normalise_on": "t1"}, "That SyN of the T1"),
    ({"syn_metric": "CC"}, "SyN (CC"),
    ({"syn_iterations": [20, 10, 0]}, "iterations 20, 10, 0"),
    ({"tissue_metric": "CC"}, "maps (CC"),
    ({"vbm_fwhm_mm": 8.0}, "8 mm FWHM"),
    ({"study_template": True}, "study template"),
]


@pytest.mark.parametrize("change, appears", ANAT_CHANGES)
def test_each_anatomy_parameter_changes_the_text(base, change, appears):
    text = _text({f"anat.{k}": v for k, v in change.items()})
    assert appears in text and appears not in base


STATS_CHANGES = [
    ({"covariates": ["age"]}, "age as covariate of no interest"),
    ({"inference.height_p": 0.001}, "P < 0.001 uncorrected"),
    ({"inference.extent_voxels": 250}, "smaller than 250 mm³"),
    ({"inference.permutations": 0}, "cluster-level FWE p from random field theory"),
    ({"inference.permutations": 500}, "500 Freedman–Lane permutations"),
    ({"inference.tfce": True}, "TFCE"),
    ({"inference.svc_alpha": 0.01}, "FWE α = 0.01"),
    ({"svc": [{"name": "th", "region": "Thalamus_L", "centre_mm": [-12, -18, 8], "radius_mm": 10}]},
     "th: a 10 mm sphere at (-12, -18, 8) mm within the AAL2 region Thalamus_L"),
    ({"clinical.roi_covariates": ["tiv", "age"]}, "ANCOVA with tiv and age"),
    ({"clinical.partial_covariates": ["age", "dd"]}, "controlling for age and dd"),
    ({"mni_voxel_size": 1.5}, "at 1.5 mm"),
    ({"qc.min_gm_correlation": 0.5}, "template's GM below 0.5"),
    ({"contrasts": [{"name": "chi_als_gt_nc", "map": "r2star", "weights": "ALS - NC"}]},
     "chi_als_gt_nc: r2star, ALS - NC"),
]


@pytest.mark.parametrize("change, appears", STATS_CHANGES)
def test_each_statistics_choice_changes_the_text(base, change, appears):
    text = _text(change)
    assert appears in text and appears not in base


def test_what_the_chain_decided_is_counted(base):
    assert "(1 of 2 subjects: 1 along the first and second image axes)" in base
    assert "ranged 0.0001 to 0.0005 across subjects" in base
    clean = _text(chains=[{"tapered_axes": [], "tv_lambda_effective": 1e-4}])
    assert "none of the 1 subjects showed it" in clean
    warned = _text(chains=[{**CHAINS[0], "r2star_warning": "R2* unreliable: 2 echoes (at least 3 are needed); x"}])
    assert "for 1 of 1 subjects the echoes could not measure tissue's decay" in warned
    assert "20 subjects (1 excluded)" in base and "9 subjects (3 excluded)" in _text(n_used=9, n_excluded=3)


def test_the_default_text_names_no_step_that_did_not_run(base):
    """Old claims that were not true of the defaults: SVC spheres around the peak, SyN of the T1 as the
    normalisation, ANCOVA with TIV whatever the spec says."""
    assert "around the regional peak" not in base
    assert "the whole AAL2 region Thalamus_L" in base
    assert "GM and WM posteriors" in base
    spec_default = load_spec()
    assert QSMParams().ringing == spec_default.qsm.ringing == "auto"
    assert AnatParams().normalise_on == spec_default.anat.normalise_on


def test_an_older_store_without_a_recorded_parameter_still_gets_a_text():
    spec = load_spec()
    paragraphs = methods_text(spec, {"inversion": "tv"}, {}, 5, 0, [])
    assert len(paragraphs) == 5 and all(p.strip() for p in paragraphs)
