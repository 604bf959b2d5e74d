"""The reference study's published results (Li et al., Front. Neurol. 2022), as data.

What a reproduction compares against and what the simulator's effects are
calibrated to (:mod:`ferritin.cohort.calibration`).  Every number is the
paper's; where the paper gives a bound (``P < 0.001``, ``P > 0.9``) the bound
is kept with its direction, so a comparison can say whether a measured value
lies on the same side.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChiPeak", "GmRoi", "Correlation", "CHI_PEAKS", "GM_ROIS", "CORRELATIONS", "TABLE_ONE",
           "NORMALITY", "N_PER_GROUP"]

#: subjects per group after exclusions
N_PER_GROUP = 34


@dataclass(frozen=True)
class ChiPeak:
    """A voxelwise χ (ALS > NC) result in one small volume (an AAL region)."""

    name: str  # the small volume of the default study spec
    region: str  # AAL region
    peak_mni: tuple[float, float, float] | None
    T: float
    p_svc: float
    p_svc_bound: str  # "=", "<" or ">": how the paper states P_SVC
    voxels_p005: int | None  # voxels (1 mm) at P < 0.005 uncorrected in the region; None where not given
    significant: bool


@dataclass(frozen=True)
class GmRoi:
    """The GM group difference (ANCOVA with TIV) in the clusters of increased χ."""

    name: str
    regions: tuple[str, ...]  # the χ small volumes whose clusters make the ROI
    T: float
    p: float
    p_bound: str


@dataclass(frozen=True)
class Correlation:
    """A Pearson correlation in the patients (ROI means against each other or a clinical score)."""

    name: str
    x: tuple[str, str]  # (map, ROI name of GM_ROIS)
    y: tuple[str, str] | str  # (map, ROI) or a clinical score column
    R: float
    p: float
    tails: int  # 1: one-tailed in the sign of R, 2: two-tailed


CHI_PEAKS = (
    ChiPeak("precentral_L", "Precentral_L", (-40.0, -24.0, 59.0), 4.78, 0.03, "=", 220, True),
    ChiPeak("thalamus_R", "Thalamus_R", (20.0, -17.0, 7.0), 6.38, 0.001, "<", None, True),
    ChiPeak("thalamus_L", "Thalamus_L", (-13.0, -5.0, 7.0), 4.64, 0.02, "=", None, True),
    ChiPeak("precentral_R", "Precentral_R", None, 3.89, 0.9, ">", 82, False),
)

#: both thalami together hold 1,674 voxels at P < 0.005 (the paper gives no split)
THALAMUS_VOXELS_P005 = 1674

GM_ROIS = (
    GmRoi("precentral", ("precentral_L",), -2.42, 0.02, "="),
    GmRoi("thalamus", ("thalamus_R", "thalamus_L"), -4.10, 0.001, "<"),
)

CORRELATIONS = (
    Correlation("chi vs GM, precentral", ("chi", "precentral"), ("gm_mod_s", "precentral"), -0.44, 0.004, 1),
    Correlation("chi vs GM, thalamus", ("chi", "thalamus"), ("gm_mod_s", "thalamus"), -0.32, 0.04, 1),
    Correlation("chi precentral vs UMN", ("chi", "precentral"), "umn", 0.40, 0.02, 2),
    Correlation("chi thalamus vs ALSFRS-R", ("chi", "thalamus"), "alsfrs_r", -0.36, 0.04, 2),
    Correlation("GM precentral vs UMN", ("gm_mod_s", "precentral"), "umn", -0.48, 0.004, 2),
)

#: Table 1: age mean and s.d. per group, men per group, and the tests' P
TABLE_ONE = {
    "age": {"ALS": (51.31, 8.24), "NC": (50.96, 9.35), "p": 0.56},
    "men": {"ALS": 23, "NC": 19, "p": 0.32},
}

#: smallest Lilliefors P of the ROI values over both groups ("P > bound")
NORMALITY = {"chi": 0.31, "gm_mod_s": 0.14}
