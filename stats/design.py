"""Design matrices and contrasts from a participants table.

Groups are coded SPM-style, one indicator column per group and no intercept
(so ``ALS - NC`` is the contrast ``[1, -1, 0, ...]``); covariates of no
interest (TIV, age, ...) are mean-centred over the subjects in the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Design", "DesignError", "design_matrix", "parse_contrast"]


@dataclass(frozen=True)
class Design:
    """A design matrix with named columns, rows in ``subjects`` order."""

    X: np.ndarray
    columns: tuple[str, ...]
    subjects: tuple[str, ...]
    groups: tuple[str, ...] = ()

    @property
    def df(self) -> int:
        """Error degrees of freedom, n - rank(X)."""
        return int(self.X.shape[0] - np.linalg.matrix_rank(self.X))

    def contrast(self, spec) -> np.ndarray:
        """A contrast vector (or matrix) from weights or a string like ``"ALS - NC"``."""
        return parse_contrast(spec, self.columns)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.X, index=list(self.subjects), columns=list(self.columns))


class DesignError(ValueError):
    """A design that cannot be built from the table: a missing column or value, an empty group, rank deficiency."""


def design_matrix(participants: pd.DataFrame, group: str = "group", groups=None, covariates=(),
                  center: bool = True) -> Design:
    """Build a group design with covariates of no interest.

    Parameters
    ----------
    participants : DataFrame indexed by subject
    group : str
        Column with the group label.
    groups : sequence of str, optional
        Groups in column order (default: sorted unique labels).  Subjects of
        other groups are left out.
    covariates : sequence of str
        Numeric columns added as regressors (e.g. ``("tiv", "age")``); a
        categorical column (e.g. ``sex``) is coded as one centred indicator
        per level after the first.
    center : bool
        Mean-centre covariates (SPM's "overall mean" centring).

    Raises
    ------
    ValueError
        On a missing column, missing covariate values (naming the subjects),
        an empty group, or a rank-deficient design (naming the columns).
    """
    if group not in participants.columns:
        raise DesignError(f"no column {group!r} in the participants table (have {list(participants.columns)})")
    labels = participants[group].astype("string")
    if groups is None:
        groups = sorted(labels.dropna().unique())
    groups = [str(g) for g in groups]
    table = participants[labels.isin(groups).fillna(False).to_numpy(bool)]
    for g in groups:
        if not (table[group].astype(str) == g).any():
            raise DesignError(f"group {g!r} has no subjects (groups present: {sorted(labels.dropna().unique())})")
    cols = {f"{g}": (table[group].astype(str) == g).to_numpy(float) for g in groups}
    for cov in covariates:
        if cov not in table.columns:
            raise DesignError(f"covariate {cov!r} is not a column of the participants table")
        values = table[cov]
        missing = values.isna()
        if missing.any():
            subs = ", ".join(map(str, table.index[missing.to_numpy()]))
            raise DesignError(f"covariate {cov!r} is missing for {subs}")
        if pd.api.types.is_numeric_dtype(values):
            v = values.to_numpy(float)
            cols[cov] = v - v.mean() if center else v
        else:
            levels = sorted(values.astype(str).unique())
            for lev in levels[1:]:
                v = (values.astype(str) == lev).to_numpy(float)
                cols[f"{cov}[{lev}]"] = v - v.mean() if center else v
    X = np.column_stack(list(cols.values()))
    names = tuple(cols)
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        # name the columns that a least-squares fit of each column on the others explains exactly
        culprits = []
        for j, name in enumerate(names):
            others = np.delete(X, j, axis=1)
            if others.size and np.linalg.matrix_rank(others) == rank:
                culprits.append(name)
        raise DesignError(f"design is rank deficient (rank {rank} < {X.shape[1]} columns); "
                         f"linearly dependent columns: {culprits}")
    if X.shape[0] <= X.shape[1]:
        raise DesignError(f"{X.shape[0]} subjects cannot estimate {X.shape[1]} parameters")
    return Design(X, names, tuple(map(str, table.index)), tuple(groups))


def parse_contrast(spec, columns) -> np.ndarray:
    """Contrast weights from a vector, a dict ``{column: weight}`` or ``"A - B"``."""
    columns = list(columns)
    if isinstance(spec, str):
        weights = dict.fromkeys(columns, 0.0)
        expr = spec.replace(" ", "")
        if not expr:
            raise DesignError("empty contrast")
        import re

        for sign, name in re.findall(r"([+-]?)([^+-]+)", expr):
            coef = 1.0
            m = re.match(r"^(\d*\.?\d+)\*(.+)$", name)
            if m:
                coef, name = float(m[1]), m[2]
            if name not in weights:
                raise DesignError(f"contrast {spec!r}: {name!r} is not a design column {columns}")
            weights[name] += -coef if sign == "-" else coef
        return np.array([weights[c] for c in columns])
    if isinstance(spec, dict):
        unknown = set(spec) - set(columns)
        if unknown:
            raise DesignError(f"contrast names unknown columns {sorted(unknown)}; columns are {columns}")
        return np.array([float(spec.get(c, 0.0)) for c in columns])
    c = np.atleast_1d(np.asarray(spec, dtype=float))
    if c.shape[-1] != len(columns):
        raise DesignError(f"contrast has {c.shape[-1]} weights for {len(columns)} columns {columns}")
    return c
