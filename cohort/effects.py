"""The planted group effects of a simulated cohort, and the reference study's.

Both the simulator (:mod:`.simulate`), which plants them, and the calibration
(:mod:`.calibration`), which scales them so that ferritin measures the
published statistics, read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Effect", "REFERENCE_EFFECTS", "REFERENCE_N_PER_GROUP"]


@dataclass(frozen=True)
class Effect:
    """A planted group effect: ALS − control, in one atlas region near a peak.

    The effect map is the AAL region intersected with a sphere of
    ``radius_mm`` around ``peak_mni``, smoothed by ``smooth_mm`` FWHM, and
    scaled per patient by ``max(0, 1 + gain * severity)``, the gain
    ``severity_gain`` for χ and ``gm_severity_gain`` (default: the same) for
    GM: how closely iron and atrophy follow a patient's severity need not be
    the same.  ``chi_ppm`` is
    added to χ there; ``gm_fraction`` is the change of the region's GM
    (−0.10: patients have 10 % less), planted as a local contraction of the
    tissue (:func:`atrophy_displacement`: the region is that much smaller),
    which VBM measures through the Jacobian of the normalisation, or, for the
    share ``gm_composition`` of it, as a change of tissue composition (GM
    replaced by CSF where it is, as the age effect), which VBM measures in the
    segmentation.  How much of an atrophy a normalisation keeps depends on
    which of the two it is (``docs/vbm-contraction/contraction_recovery.py
    --atrophy``), and in a GM/WM mix such as the thalamus a three-class
    segmentation reads GM replaced by CSF (a darker voxel) as more GM: on the
    demo cohort with ``gm_composition=1`` the right-thalamus core had truth
    t −5.5 and segmentation t +4.7.  The default is a contraction only.
    """

    name: str
    region: str
    peak_mni: tuple[float, float, float]
    radius_mm: float = 12.0
    chi_ppm: float = 0.02
    gm_fraction: float = -0.10
    smooth_mm: float = 4.0
    severity_gain: float = 0.5
    gm_composition: float = 0.0
    gm_severity_gain: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.gm_composition <= 1.0:
            raise ValueError(f"effect {self.name!r}: gm_composition must be a share in [0, 1], "
                             f"got {self.gm_composition}")
        if self.severity_gain < 0 or (self.gm_severity_gain is not None and self.gm_severity_gain < 0):
            raise ValueError(f"effect {self.name!r}: severity gains must be >= 0, got {self.severity_gain} "
                             f"and {self.gm_severity_gain}")

    def gain(self, modality: str) -> float:
        """The severity gain of the effect's ``"chi"`` or ``"gm"`` part."""
        if modality not in ("chi", "gm"):
            raise ValueError(f"modality must be 'chi' or 'gm', got {modality!r}")
        if modality == "gm" and self.gm_severity_gain is not None:
            return self.gm_severity_gain
        return self.severity_gain


#: Effects of the reference study (ALS > NC in chi, ALS < NC in GM).
REFERENCE_EFFECTS = (
    Effect("precentral_L", "Precentral_L", (-40.0, -24.0, 59.0), radius_mm=14.0, chi_ppm=0.025, gm_fraction=-0.08),
    Effect("thalamus_R", "Thalamus_R", (20.0, -17.0, 7.0), radius_mm=12.0, chi_ppm=0.03, gm_fraction=-0.12),
    Effect("thalamus_L", "Thalamus_L", (-13.0, -5.0, 7.0), radius_mm=12.0, chi_ppm=0.025, gm_fraction=-0.10),
)

#: Group size of the reference study (after exclusions).
REFERENCE_N_PER_GROUP = 34
