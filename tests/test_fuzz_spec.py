"""A seeded mutation loop over the study spec's YAML: every mutated file is read or refused with a
SpecError (one line), never another exception, and never by expanding what it refers to."""

from __future__ import annotations

import random

import pytest

from ferritin.engine.spec import SpecError, default_spec_text, load_spec

N_MUTATIONS = 80
ODD = ["1e9", "-1", "0", ".inf", ".nan", "~", "[]", "{}", "'x'", "true", "a/b", "../../x", "*alias", "&a [1, 2]",
       "[*a, *a, *a, *a, *a, *a, *a, *a, *a]", "1e-400", "0x10", "'𝜒'", "{a: 1, a: 2}", "Thalamus_l", "99999999999"]


def _mutated(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        line = lines[i]
        kind = rng.random()
        if ":" in line and kind < 0.6:  # a value replaced
            key, _, _ = line.partition(":")
            lines[i] = f"{key}: {rng.choice(ODD)}"
        elif kind < 0.8:  # a line given twice (a duplicate key in most places)
            lines.insert(i, line)
        else:  # a line dropped
            del lines[i]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(N_MUTATIONS))
def test_a_mutated_spec_is_read_or_refused_in_one_line(seed, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(_mutated(default_spec_text(), random.Random(seed)))
    try:
        load_spec(path)
    except SpecError as exc:
        message = str(exc)
        assert message.strip() and len(message) < 600, message
