"""Group, age, sex, latent severity and clinical scores of every simulated participant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .spec import CLINICAL_SCORES, SimulationSpec

__all__ = ["sample_participants"]

def sample_participants(spec: SimulationSpec) -> pd.DataFrame:
    """Sample group, age, sex, severity and clinical scores for every subject.

    Clinical scores of patients are tied to a latent severity ``s ~ N(0, 1)``:
    ALSFRS-R falls, the UMN score rises with ``s``, and DPR = (48 − ALSFRS-R)/DD.
    Controls have no clinical scores (``n/a``).
    """
    rng = np.random.default_rng([spec.seed, 0])
    rows = []
    n = 0
    for group, count in spec.n_per_group.items():
        for _ in range(int(count)):
            n += 1
            patient = group == spec.patient_group
            sev = float(rng.standard_normal()) if patient else 0.0
            male = rng.random() < spec.male_fraction.get(group, 0.5)
            age = float(np.clip(rng.normal(spec.age_mean, spec.age_sd), 25, 85))
            row = {
                "participant_id": f"sub-{n:03d}",
                "group": group,
                "age": round(age, 1),
                "sex": "M" if male else "F",
                "severity": sev,
            }
            if patient:
                dd = round(float(np.clip(np.exp(rng.normal(np.log(14), 0.5)), 3, 96)), 1)
                alsfrs, umn = (int(np.clip(np.round(CLINICAL_SCORES[k].at(sev) + rng.normal(0, spec.clinical_noise[k])),
                                           *CLINICAL_SCORES[k].limits)) for k in ("alsfrs_r", "umn"))
                row.update(alsfrs_r=alsfrs, umn=umn, dd=dd, dpr=round((48 - alsfrs) / dd, 4))
            else:
                row.update(alsfrs_r=np.nan, umn=np.nan, dd=np.nan, dpr=np.nan)
            rows.append(row)
    df = pd.DataFrame(rows)
    # Head size: men larger on average (TIV ~1600 vs ~1400 ml).
    base = np.where(df["sex"] == "M", 0.955, 0.915)
    df["head_scale"] = base * (1 + spec.head_scale_sd * rng.standard_normal(len(df)))
    return df
