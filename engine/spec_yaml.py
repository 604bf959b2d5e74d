"""Reading a study spec's YAML strictly: no duplicate keys, no alias bombs, YAML 1.2 numbers.

PyYAML's safe loader keeps the last of two equal keys without a word, expands
aliases without bound (nine nested aliases are gigabytes once anything walks
the value), and reads ``1e9`` as a string (YAML 1.1 wants a dot in a float).
A spec is short and written by hand: it needs none of that.
"""

from __future__ import annotations

import re
import reprlib

import yaml

__all__ = ["MAX_ALIASES", "SpecYAMLError", "read_spec_yaml", "shown"]

#: a spec file may use an alias (``*name``) at most this many times
MAX_ALIASES = 16
#: how much of a value a message shows
SHOWN_CHARS = 80

# YAML 1.2's float: an exponent without a dot (1e9, 2E-3) is a number too
_FLOAT_12 = re.compile(r"""^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$""", re.X)


class SpecYAMLError(yaml.YAMLError):
    """A spec file that is YAML but not a spec's kind of YAML (duplicate keys, too many aliases)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and more than :data:`MAX_ALIASES` aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise SpecYAMLError(f"line {mark.line + 1}: more than {MAX_ALIASES} aliases (*name); a spec "
                                    "needs none: write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise SpecYAMLError(f"line {key_node.start_mark.line + 1}: key {shown(key)} appears twice in one "
                                    f"mapping (first on line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def read_spec_yaml(text: str):
    """The YAML document ``text`` as Python values, refusing duplicate keys and alias bombs.

    Raises
    ------
    yaml.YAMLError
        :class:`SpecYAMLError` for what a spec refuses, PyYAML's own errors for what is not YAML.
    """
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def shown(value, width: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``width`` characters, so that a message stays one readable line."""
    short = reprlib.Repr()  # never builds the whole repr of a large value
    short.maxstring = short.maxother = width
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    short.maxlevel = 3
    text = short.repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
