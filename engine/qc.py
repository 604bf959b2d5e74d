"""Per-subject quality control: is this subject's anatomy plausible enough for group statistics?

A wrong normalisation can look right to checks built from its own outputs: the
tissue priors are warped with it, so the warped GM agrees with the template GM
even when the "brain" is the neck.  The criteria here each measure something a
wrong result cannot fake:

* TIV and the GM share of it within adult ranges (a brain mask in the neck or
  a T1 stretched over the skull gives neither);
* the warped T1's intensities against the template T1 (an intensity check,
  independent of the segmentation);
* where the brain sits in the head: the top of the brain mask lies within a few
  centimetres of the top of the head (scalp, skull and CSF), not in the face or neck.

The defaults are :class:`QCCriteria`'s; a study spec overrides them in its
``qc`` section (:class:`ferritin.engine.spec.StudySpec.qc`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["QCCriteria", "qc_failures"]


@dataclass(frozen=True)
class QCCriteria:
    """Limits a subject's anatomy must meet to enter the group statistics."""

    #: correlation of the warped GM with the template GM (the normalisation's own fit)
    min_gm_correlation: float = 0.6
    #: correlation of the warped, bias-corrected T1 with the template T1 in the brain
    min_t1_correlation: float = 0.6
    #: smallest total intracranial volume (ml): adult heads lie well inside 1.0-2.0 l
    min_tiv_ml: float = 950.0
    max_tiv_ml: float = 2100.0  # largest total intracranial volume (ml)
    #: smallest grey-matter share of TIV: adults (including atrophy) lie about 0.33-0.50
    min_gm_fraction: float = 0.28
    max_gm_fraction: float = 0.54  # largest grey-matter share of TIV
    #: top of the head to the top of the brain mask (mm): scalp, skull and CSF
    max_brain_top_gap_mm: float = 40.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if not self.min_tiv_ml < self.max_tiv_ml:
            raise ValueError(f"min_tiv_ml ({self.min_tiv_ml}) must be below max_tiv_ml ({self.max_tiv_ml})")
        if not 0 <= self.min_gm_fraction < self.max_gm_fraction <= 1:
            raise ValueError("min_gm_fraction and max_gm_fraction must satisfy 0 <= min < max <= 1")
        for name in ("min_gm_correlation", "min_t1_correlation"):
            if not -1 <= getattr(self, name) < 1:  # a correlation of 1 or more: no subject could pass
                raise ValueError(f"{name} must lie in [-1, 1): a correlation is at most 1, got {getattr(self, name)!r}")
        if self.min_tiv_ml < 0 or self.max_brain_top_gap_mm <= 0:
            raise ValueError(f"min_tiv_ml must be >= 0 and max_brain_top_gap_mm positive; got {self.min_tiv_ml!r} "
                             f"and {self.max_brain_top_gap_mm!r}")


def qc_failures(measures: dict, criteria: QCCriteria) -> list[str]:
    """Every criterion ``measures`` (the anatomy stage's attributes) fails, in words; empty if it passes.

    Measures that a store written before a criterion existed does not hold are not judged.
    """
    out = []

    def below(key, limit, what, fmt="{:.3f}"):
        v = measures.get(key)
        if v is not None and np.isfinite(v) and v < limit:
            out.append(f"{what} {fmt.format(v)} < {limit}")

    def above(key, limit, what, fmt="{:.3f}"):
        v = measures.get(key)
        if v is not None and np.isfinite(v) and v > limit:
            out.append(f"{what} {fmt.format(v)} > {limit}")

    below("qc_gm_corr", criteria.min_gm_correlation, "GM correlation with the template")
    below("qc_t1_corr", criteria.min_t1_correlation, "T1 correlation with the template")
    below("tiv_ml", criteria.min_tiv_ml, "TIV (ml)", "{:.0f}")
    above("tiv_ml", criteria.max_tiv_ml, "TIV (ml)", "{:.0f}")
    gm, tiv = measures.get("gm_ml"), measures.get("tiv_ml")
    if gm is not None and tiv and np.isfinite(gm):
        share = gm / tiv
        if share < criteria.min_gm_fraction:
            out.append(f"GM share of TIV {share:.3f} < {criteria.min_gm_fraction}")
        if share > criteria.max_gm_fraction:
            out.append(f"GM share of TIV {share:.3f} > {criteria.max_gm_fraction}")
    above("qc_brain_top_gap_mm", criteria.max_brain_top_gap_mm, "brain top below the head top (mm)", "{:.1f}")
    return out
