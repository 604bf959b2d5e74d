"""Checks that parameter classes run on themselves when constructed."""

from __future__ import annotations

__all__ = ["check_choices"]


def check_choices(params) -> None:
    """Refuse a method-naming field whose value is not one of the class's ``choices``.

    Raises
    ------
    ValueError
        Naming the field, the values it accepts and the value given.
    """
    for key, allowed in type(params).choices.items():
        value = getattr(params, key)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
