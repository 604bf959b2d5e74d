"""A seeded mutation loop over sidecars, NIfTI headers and participants.tsv.

Every mutated dataset must give either a clear refusal (a FerritinError for the dataset, or a
subject failure with a reason that is not an "unexpected error") or a store whose images read back
exactly what the files hold.  Runs in well under a minute.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import BIDSFactory

from ferritin.cohort.errors import FerritinError
from ferritin.cohort.store import CohortStore
from ferritin.engine.ingest import ingest

pytestmark = pytest.mark.slow  # 60 mutated datasets, each ingested

N_MUTATIONS = 72
ODD_VALUES = [None, "", "abc", -1, 0, 1e300, True, [], {}, "NaN", [0.004, "x"], 4000, -0.0, "rad", "arbitrary"]


def _sidecars(root):
    return sorted(root.rglob("*_MEGRE.json"))


def _images(root):
    return sorted(root.rglob("*.nii.gz"))


def mutate_sidecar_value(root, rng):
    path = rng.choice(_sidecars(root))
    meta = json.loads(path.read_text())
    key = rng.choice(sorted(meta) + ["Units", "EchoTime"])
    meta[key] = rng.choice(ODD_VALUES)
    path.write_text(json.dumps(meta))


def mutate_sidecar_bytes(root, rng):
    path = rng.choice(_sidecars(root))
    raw = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    path.write_bytes(bytes(raw[: rng.randint(0, len(raw))] if rng.random() < 0.3 else raw))


def mutate_header(root, rng):
    path = rng.choice(_images(root))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    for _ in range(rng.randint(1, 3)):
        raw[rng.randrange(348)] = rng.randrange(256)  # the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(raw)))


def truncate_image(root, rng):
    path = rng.choice(_images(root))
    raw = path.read_bytes()
    path.write_bytes(raw[: rng.randint(0, len(raw) - 1)])


def mutate_table(root, rng):
    path = root / "participants.tsv"
    text = list(path.read_text())
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(text) + 1)
        if rng.random() < 0.5 and text:
            del text[min(pos, len(text) - 1)]
        else:
            text.insert(pos, rng.choice(["\t", "\n", '"', " ", "=", "x", "\r", "n/a"]))
    path.write_text("".join(text))


SPELLINGS = ["M", "m", "male", "Male", " F", "f", "FEMALE", "woman", "1", "2", "X", "n/a", "Als", "als", "NC ", "nc",
             "ALS", "-5", "200", "121", "0"]


def mutate_categories(root, rng):
    """A value of group, sex or age spelled another way: read as meant, or refused by its row."""
    path = root / "participants.tsv"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    row = rng.randrange(1, len(lines))
    fields = lines[row].split("\t")
    column = rng.choice([c for c in ("group", "sex", "age") if c in header])
    fields[header.index(column)] = rng.choice(SPELLINGS)
    lines[row] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")


MUTATIONS = [mutate_sidecar_value, mutate_sidecar_bytes, mutate_header, truncate_image, mutate_table,
             mutate_categories]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    f = BIDSFactory(tmp_path_factory.mktemp("fuzz") / "bids", shape=(6, 7, 5), n_echo=2)
    f.subject("sub-01")
    f.subject("sub-02", group="ALS", age=61.0)
    f.write_participants()
    return f.root


def _reads_back(store: CohortStore, root, sub: str) -> None:
    ds = store.open_node(f"native/{sub}").load()
    for echo in range(ds.sizes["echo"]):
        path = root / sub / "anat" / f"{sub}_echo-{echo + 1}_part-mag_MEGRE.nii.gz"
        want = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        np.testing.assert_array_equal(ds["megre_mag"].values[echo], want)


@pytest.mark.parametrize("seed", range(N_MUTATIONS))
def test_mutated_input_is_refused_clearly_or_read_exactly(seed, pristine, client, tmp_path):
    rng = random.Random(seed)
    root = tmp_path / "bids"
    shutil.copytree(pristine, root)
    mutation = MUTATIONS[seed % len(MUTATIONS)]
    mutation(root, rng)
    try:
        result = ingest(root, tmp_path / "c.zarr", client, progress=False)
    except FerritinError:
        return  # a refusal of the whole dataset, with its message
    for reason in result.failed.values():
        assert "unexpected error" not in reason, (mutation.__name__, reason)
        assert reason.strip(), mutation.__name__
    store = CohortStore(tmp_path / "c.zarr")
    for sub in result.written:
        _reads_back(store, root, sub)
    _one_meaning_per_value(store)


def _one_meaning_per_value(store: CohortStore) -> None:
    """What was ingested is what the model will read: sex as M/F/O, one spelling per group, ages of people."""
    table = store.open_node("participants").load()
    if "sex" in table:
        assert set(table["sex"].values) <= {"M", "F", "O", ""}, set(table["sex"].values)
    if "group" in table:
        groups = [g for g in table["group"].values if g]
        assert len({g.casefold() for g in groups}) == len(set(groups)), groups
    if "age" in table and np.issubdtype(table["age"].dtype, np.number):
        ages = table["age"].values[np.isfinite(table["age"].values)]
        assert ((ages >= 0) & (ages <= 120)).all(), ages
