"""The declarative study spec: load, validate, default."""

from __future__ import annotations

import copy
import dataclasses
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["load_spec", "complete_spec", "default_spec", "default_spec_text", "SpecError"]


class SpecError(ValueError):
    """A study spec that cannot be used, with the key that is wrong."""


_REQUIRED = {"groups": list, "covariates": list, "contrasts": list, "inference": dict}


def default_spec_text() -> str:
    return resources.files("ferritin.engine").joinpath("default_study.yaml").read_text()


def default_spec() -> dict:
    return yaml.safe_load(default_spec_text())


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path | None = None) -> dict:
    """The study spec at ``path`` laid over the default (reference study).

    Raises
    ------
    SpecError
        Naming the key and what is wrong.
    """
    if path is None:
        return complete_spec({})
    try:
        user = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the study spec: {exc}") from exc
    if not isinstance(user, dict):
        raise SpecError(f"{path}: the study spec must be a mapping of keys to values")
    return complete_spec(user)


def complete_spec(spec: dict) -> dict:
    """A whole or partial spec laid over the default study and validated.

    The shipped ``default_study.yaml`` is the one source of defaults: a Python
    caller passing a partial dict gets the analysis the command line would run
    with the same keys, and the pipeline reads every key without a fallback.
    Completing a complete spec returns an equal one.

    Raises
    ------
    SpecError
        Naming the key and what is wrong.
    """
    if not isinstance(spec, dict):
        raise SpecError(f"the study spec must be a mapping of keys to values, got {type(spec).__name__}")
    default = default_spec()
    _check_known_keys(spec, default)
    spec = _merge(default, spec)
    _validate(spec)
    return spec


def _validate(spec: dict) -> None:
    """Every value of a complete spec: kinds, ranges, names that must refer to each other."""
    for key, kind in _REQUIRED.items():
        if not isinstance(spec.get(key), kind):
            raise SpecError(f"spec key {key!r} must be a {kind.__name__}, got {spec.get(key)!r}")
    vs = spec.get("mni_voxel_size")
    if isinstance(vs, bool) or not isinstance(vs, int | float) or not 0.5 <= vs <= 8:
        raise SpecError(f"mni_voxel_size must be a number of mm between 0.5 and 8, got {vs!r}")
    if len(spec["groups"]) < 2:
        raise SpecError("spec key 'groups' needs at least two groups")
    for i, c in enumerate(spec["contrasts"]):
        for k in ("name", "map", "weights"):
            if k not in c:
                raise SpecError(f"contrasts[{i}] has no {k!r}")
        if c["map"] not in ("chi", "gm_mod_s"):
            raise SpecError(f"contrasts[{i}].map must be 'chi' or 'gm_mod_s', got {c['map']!r}")
    inf = spec["inference"]
    if not 0 < float(inf.get("height_p", 0.001)) < 1:
        raise SpecError("inference.height_p must be in (0, 1)")
    n_perm = inf.get("permutations", 0) or 0
    if not isinstance(n_perm, int) or n_perm < 0 or n_perm == 1:
        raise SpecError(f"inference.permutations must be 0 (off) or an integer >= 2, got {n_perm!r}")
    for i, s in enumerate(spec.get("svc", [])):
        if "region" not in s and "centre_mm" not in s:
            raise SpecError(f"svc[{i}] needs a 'region' (AAL name) and/or 'centre_mm'")
    roi = spec.get("roi") or {}
    names = {c["name"] for c in spec["contrasts"]}
    for c in roi.get("from_contrasts", []) or []:
        if c not in names:
            raise SpecError(f"roi.from_contrasts names {c!r}; the contrasts are {sorted(names)}")
    for i, r in enumerate(roi.get("regions", []) or []):
        if "name" not in r or not ("region" in r or "centre_mm" in r):
            raise SpecError(f"roi.regions[{i}] needs a 'name' and a 'region' (AAL name) and/or 'centre_mm'")
    _check_stage_params(spec)
    from .qc import QCCriteria

    try:
        QCCriteria.from_spec(spec)
    except (TypeError, ValueError) as exc:
        raise SpecError(str(exc)) from None
    cl = spec.get("clinical") or {}
    signs = [cl.get("chi_vs_gm", "negative")]
    signs += [v for per_map in (cl.get("expected_sign") or {}).values() for v in (per_map or {}).values()]
    for v in signs:
        if v not in ("positive", "negative"):
            raise SpecError(f"clinical signs must be 'positive' or 'negative', got {v!r}")
    if cl.get("patient_group", spec["groups"][0]) not in spec["groups"]:
        raise SpecError(f"clinical.patient_group {cl['patient_group']!r} is not one of the groups {spec['groups']}")


#: sections whose keys are checked against the default spec's (qsm, anat and qc against their classes)
_FIXED_SECTIONS = ("inference", "roi", "clinical")
_LIST_ENTRY_KEYS = {"contrasts": {"name", "map", "weights"},
                    "svc": {"name", "region", "radius_mm", "centre_mm"}}


def _unknown(keys, valid, where: str) -> None:
    extra = sorted(set(keys) - set(valid), key=str)
    if extra:
        raise SpecError(f"{where}{extra[0]} is not a spec key; the keys{' of ' + where.rstrip('.') if where else ''} "
                        f"are {', '.join(sorted(valid))}")


def _check_known_keys(user: dict, default: dict) -> None:
    """Every key a spec file gives is one the study reads: a misspelt key is refused, naming the valid ones."""
    _unknown(user, default, "")
    for section in _FIXED_SECTIONS:
        if isinstance(user.get(section), dict):
            _unknown(user[section], default[section], f"{section}.")
    for section, valid in _LIST_ENTRY_KEYS.items():
        for i, entry in enumerate(user.get(section) or []):
            if isinstance(entry, dict):
                _unknown(entry, valid, f"{section}[{i}].")


#: keys of the qsm and anat sections that the pipeline reads itself (not QSMParams / AnatParams fields)
PIPELINE_KEYS = {"qsm": (), "anat": ("study_template",)}


def _check_stage_params(spec: dict) -> None:
    """The qsm and anat sections name real parameters, with values of the right kind.

    Checked here rather than when the first subject runs, where a misspelt
    key would fail every subject of the cohort one by one.
    """
    from .anat.stages import AnatParams
    from .qsm.chain import QSMParams

    for section, cls in (("qsm", QSMParams), ("anat", AnatParams)):
        values = spec.get(section) or {}
        if not isinstance(values, dict):
            raise SpecError(f"spec key {section!r} must be a mapping of parameters to values, got {values!r}")
        defaults = cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key in PIPELINE_KEYS[section]:
                if not isinstance(value, bool):
                    raise SpecError(f"{section}.{key} must be true or false, got {value!r}")
                continue
            if key not in fields:
                raise SpecError(f"{section}.{key} is not one of the {section} parameters; the parameters are "
                                f"{', '.join(sorted(fields | set(PIPELINE_KEYS[section])))}")
            allowed = cls.choices.get(key)
            if allowed is not None and value not in allowed:
                raise SpecError(f"{section}.{key} must be one of {', '.join(allowed)}; got {value!r}")
            optional = "None" in str(next(f.type for f in dataclasses.fields(cls) if f.name == key))
            if value is None and optional:
                continue
            if not _same_kind(value, getattr(defaults, key)):
                raise SpecError(f"{section}.{key} must be {_kind_name(getattr(defaults, key))}, got {value!r}")


def _same_kind(value, default) -> bool:
    if default is None:  # optional numbers (None: the method's own choice)
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(value, int) if isinstance(default, int) else True
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


def _kind_name(default) -> str:
    if default is None or isinstance(default, float):
        return "a number"
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, tuple):
        return "a list of integers"
    return "a string"
