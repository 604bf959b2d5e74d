"""Literature tissue properties at 3 T, and how a scanner digitises its images."""

from __future__ import annotations

import numpy as np

__all__ = []

#: Susceptibility relative to CSF (ppm): cortical GM, WM, deep nuclei, head.
CHI = {
    "gm": 0.015, "wm": -0.025, "csf": 0.0,
    "Caudate": 0.06, "Putamen": 0.07, "Pallidum": 0.16, "Thalamus": 0.03,
    "skull": -2.0, "scalp": -0.1, "air": 9.4,
}
#: R2* (1/s) and proton density per tissue.
R2S = {"gm": 17.0, "wm": 21.0, "csf": 4.0, "scalp": 30.0, "skull": 200.0}
PD = {"gm": 0.85, "wm": 0.70, "csf": 1.0, "scalp": 0.6, "skull": 0.05}
T1W = {"gm": 0.55, "wm": 0.85, "csf": 0.15, "scalp": 0.65, "skull": 0.08}
#: Anti-aliasing of strong background sources before the FFT forward model (voxels).
ANTIALIAS_SIGMA_VOX = 0.7
# A scanner digitises its images: magnitude and T1w to 12-bit codes scaled by
# one slope per series, phase to 12-bit codes over one period (the scaled
# integers DICOM and dcm2niix write).
ADC_LEVELS = 4095
PHASE_STEP = float(np.float32(np.pi / 4096))
#: Bumped when the images a given spec produces change: an interrupted cohort then starts afresh.
SIMULATOR_VERSION = 1
#: R2* per ppm of iron-related chi (Yao 2009-like order of magnitude).
R2S_PER_PPM = 150.0
NUCLEI = ("Caudate", "Putamen", "Pallidum", "Thalamus")
