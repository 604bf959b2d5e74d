"""The study spec's reference, written from its dataclasses (``ferritin spec --reference``).

Each key's kind and description come from the class that holds it — the
field's type, and the ``#:`` comment above it or the ``#`` comment beside it —
and its default from the shipped YAML or the stage class, so the reference
cannot drift from the code.  ``docs/spec-reference.md`` is this text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing

from .anat import AnatParams
from .qc import QCCriteria
from .qsm.chain import QSMParams
from .spec import Clinical, Contrast, Inference, RegionOfInterest, ROISpec, SmallVolume, StudySpec, load_spec

__all__ = ["field_comments", "spec_reference"]


def field_comments(cls) -> dict[str, str]:
    """Each dataclass field's comment: the ``#:`` lines above it, else the ``#`` comment on its line."""
    lines, first = inspect.getsourcelines(cls)
    body = ast.parse(textwrap.dedent("".join(lines))).body[0]
    out = {}
    for node in body.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        row = node.lineno - 1
        above = []
        k = row - 1
        while k >= 0 and lines[k].strip().startswith("#:"):
            above.insert(0, lines[k].strip()[2:].strip())
            k -= 1
        beside = lines[row].split("  # ", 1)[1].strip() if "  # " in lines[row] else ""
        out[node.target.id] = " ".join(above) or beside
    return out


def _kind(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _kind(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is tuple or origin is tuple:
        return f"list of {_kind(args[0]) if args else 'integer'}"
    if origin is dict or tp is dict:
        return "mapping"
    return {float: "number", int: "integer", bool: "true/false", str: "string"}.get(tp, str(tp))


def _value(v) -> str:
    if dataclasses.is_dataclass(v) or (isinstance(v, tuple | list) and v and dataclasses.is_dataclass(v[0])):
        return "(below)"
    if isinstance(v, dict):
        return "(below)"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _table(cls, section: str, defaults=None, extra_rows=()) -> list[str]:
    """A section's heading, its class's summary line and one row per key."""
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    summary = inspect.getdoc(cls).split("\n\n")[0].replace("\n", " ")
    rows = [f"### `{section}`", "", summary, "", "| key | kind | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if defaults is not None:
            default = _value(getattr(defaults, f.name))
        elif f.default is not dataclasses.MISSING:
            default = _value(f.default)
        else:
            default = "required"
        rows.append(f"| `{f.name}` | {_kind(hints[f.name])} | {default} | {notes.get(f.name, '')} |")
    return [*rows, *extra_rows, ""]


def spec_reference() -> str:
    """Markdown: every key of a study spec, its kind, its shipped default and what it means."""
    spec = load_spec()
    top = [f for f in dataclasses.fields(StudySpec) if f.name != "study_template"]
    notes = field_comments(StudySpec)
    hints = typing.get_type_hints(StudySpec)
    out = ["# Study spec reference", "",
           "Generated from the spec's dataclasses by `ferritin spec --reference`; the defaults are the shipped",
           "`engine/default_study.yaml` (the reference study) and, for stage parameters it does not show, the",
           "stage classes.  `ferritin spec --check FILE` checks a file against all of this.", "",
           "### top level", "", "| key | kind | default | meaning |", "|---|---|---|---|"]
    for f in top:
        out.append(f"| `{f.name}` | {_kind(hints[f.name])} | {_value(getattr(spec, f.name))} | "
                   f"{notes.get(f.name, '')} |")
    out.append("")
    study_template = (f"| `study_template` | true/false | {_value(spec.study_template)} | "
                      f"{notes.get('study_template', '')} |")
    sections = [(QSMParams, "qsm", spec.qsm, ()), (AnatParams, "anat", spec.anat, (study_template,)),
                (QCCriteria, "qc", spec.qc, ()), (Contrast, "contrasts[]", None, ()),
                (Inference, "inference", spec.inference, ()), (SmallVolume, "svc[]", None, ()),
                (ROISpec, "roi", spec.roi, ()), (RegionOfInterest, "roi.regions[]", None, ()),
                (Clinical, "clinical", spec.clinical, ())]
    for cls, section, defaults, extra in sections:
        out.extend(_table(cls, section, defaults, extra))
    return "\n".join(out)
