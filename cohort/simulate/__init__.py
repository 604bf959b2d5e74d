"""A physically grounded simulator of cohort QSM + T1 studies, written as BIDS.

For every subject the simulator

1. builds the subject's anatomy in MNI space from the ICBM 2009 tissue priors
   (age-related GM loss, group effects in named atlas regions around given
   peaks, scaled by a latent disease severity: χ added, volume lost by a
   local contraction of the tissue),
2. builds a whole-head susceptibility map (ppm, relative to CSF/water):
   literature values per tissue and deep-grey nucleus, age-related iron gain,
   smooth texture, skull, scalp, air outside the head and in the sinuses,
3. places the head in the scanner: an affine (head size → TIV spread of
   adults, small rotation, shift) composed with a smooth random diffeomorphic
   warp of a few mm, and a small rigid head motion between the GRE and the
   T1w acquisitions,
4. acquires a multi-echo GRE (dipole forward model in k-space with padding,
   B0 along scanner z whatever the slice obliquity, T2* decay, receiver phase
   offset, complex Gaussian noise at a set SNR, wrapped phase) and a T1w
   image (tissue contrast, bias field, Rician noise) on its own grid,
5. writes everything as a BIDS dataset plus ``derivatives/ground-truth``.

All effect locations, sizes and group sizes are parameters of a
:class:`SimulationSpec`; the preset ``reference-study`` reproduces the design
of the reference study (see ``PRESETS``).

One module per part: :mod:`.spec` (the cohort's design and presets), :mod:`.tissue`
(tissue properties), :mod:`.participants`, :mod:`.geometry` (placement, atrophy field),
:mod:`.anatomy` (MNI maps and effects), :mod:`.acquisition` (the scans) and :mod:`.writing`
(the BIDS dataset).  The names below are the public API.
"""

from ..effects import REFERENCE_EFFECTS, REFERENCE_N_PER_GROUP, Effect
from .acquisition import SubjectTruth, simulate_subject
from .anatomy import effect_maps, subject_mni_maps, volume_fraction
from .geometry import Placement, atrophy_displacement
from .participants import sample_participants
from .spec import (
    CALIBRATED_CLINICAL_NOISE,
    CALIBRATED_EFFECTS,
    CLINICAL_SCORES,
    PRESETS,
    ClinicalScore,
    SimulationSpec,
    power_matched_effects,
    preset,
    read_effects,
    severity_factor,
)
from .tissue import CHI, NUCLEI, PD, R2S, SIMULATOR_VERSION, T1W
from .writing import simulate_cohort, unfinished_simulation, write_bids_subject, write_dataset_files

__all__ = ["Effect", "SimulationSpec", "SubjectTruth", "ClinicalScore", "Placement", "atrophy_displacement", "PRESETS",
           "REFERENCE_EFFECTS", "REFERENCE_N_PER_GROUP", "CALIBRATED_EFFECTS", "CALIBRATED_CLINICAL_NOISE",
           "CLINICAL_SCORES", "read_effects", "power_matched_effects", "preset", "sample_participants",
           "severity_factor", "effect_maps", "subject_mni_maps", "volume_fraction", "simulate_subject",
           "simulate_cohort", "unfinished_simulation", "write_bids_subject", "write_dataset_files", "CHI", "R2S",
           "PD", "T1W", "NUCLEI", "SIMULATOR_VERSION"]
