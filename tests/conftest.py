"""Shared fixtures: a Dask client, a simulated cohort, a tiny BIDS factory; a fast study spec and the
per-subject outputs that runs are compared by."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


#: A study spec for tests of orchestration, not accuracy: short registrations, TKD, Laplacian unwrapping
#: (a partial spec, laid over the shipped defaults).
FAST_STUDY = {"mni_voxel_size": 3.0,
              "anat": {"syn_iterations": [10, 5, 0], "tissue_iterations": [10, 5, 0], "seg_iterations": 2, "seed": 1},
              "qsm": {"inversion": "tkd", "unwrapper": "laplacian"}}


def stage_outputs(store_path, subjects) -> dict:
    """χ, χ in MNI, smoothed modulated GM and TIV of each subject: what two runs must agree on bit for bit."""
    from ferritin.cohort.store import CohortStore

    store = CohortStore(store_path)
    out = {}
    for sub in subjects:
        qsm = store.open_node(f"derived/{sub}/qsm")
        anat = store.open_node(f"derived/{sub}/anat")
        out[sub, "chi"], out[sub, "chi_mni"] = qsm["chi"].values, qsm["chi_mni"].values
        out[sub, "gm_mod_s"], out[sub, "tiv"] = anat["gm_mod_s"].values, np.array(anat.attrs["tiv_ml"])
    return out


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


@pytest.fixture(scope="session")
def client():
    """An in-process Dask cluster (threads): fast to start, real scheduler."""
    from ferritin.engine.cluster import dask_client

    with dask_client(workers=2, processes=False, quiet=True) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_spec():
    from ferritin.cohort.simulate import preset

    return preset("tiny", seed=11)


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory, tiny_spec, client):
    """A simulated 2 + 2 subject cohort at 3 mm, 4 echoes (read-only: copy before changing)."""
    from ferritin.cohort.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("tiny") / "bids"
    table = simulate_cohort(root, tiny_spec, client=client)
    return root, table


@pytest.fixture(scope="session")
def local_reference(tiny_bids, client, tmp_path_factory):
    """Two subjects of the tiny cohort through the participant level with FAST_STUDY, on a local store:
    ``(subjects, stage_outputs)``, what runs on other engines and stores are compared with."""
    from ferritin.engine import pipeline
    from ferritin.engine.ingest import ingest

    root, table = tiny_bids
    subjects = sorted(table["participant_id"])[:2]
    store = tmp_path_factory.mktemp("local-reference") / "cohort.zarr"
    ingest(root, store, client, progress=False)
    assert not pipeline.run_participants(store, FAST_STUDY, client, subjects, progress=False).failed
    return subjects, stage_outputs(store, subjects)


class BIDSFactory:
    """Write small, valid BIDS subjects that tests then break on purpose."""

    def __init__(self, root: Path, shape=(8, 9, 7), n_echo=3, seed=0):
        self.root = Path(root)
        self.shape = shape
        self.n_echo = n_echo
        self.rng = np.random.default_rng(seed)
        self.affine = np.diag([2.0, 2.0, 2.5, 1.0])
        self.affine[:3, 3] = (-8.0, -9.0, -8.75)
        self.rows: list[dict] = []
        (self.root).mkdir(parents=True, exist_ok=True)
        (self.root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))

    def anat(self, sub: str) -> Path:
        d = self.root / sub / "anat"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save(self, data, path: Path, affine=None):
        nib.save(nib.Nifti1Image(np.asarray(data), self.affine if affine is None else affine), str(path))

    def subject(self, sub: str, group="NC", age=50.0, sex="F", row=True, te=(0.004, 0.008, 0.012), units="rad"):
        d = self.anat(sub)
        for n, t in enumerate(te[: self.n_echo], start=1):
            mag = self.rng.uniform(10, 100, self.shape).astype(np.float32)
            ph = self.rng.uniform(-np.pi, np.pi, self.shape).astype(np.float32)
            for part, data in (("mag", mag), ("phase", ph)):
                stem = d / f"{sub}_echo-{n}_part-{part}_MEGRE"
                self.save(data, stem.with_name(stem.name + ".nii.gz"))
                meta = {"EchoTime": t, "MagneticFieldStrength": 3.0}
                if part == "phase":
                    meta["Units"] = units
                stem.with_name(stem.name + ".json").write_text(json.dumps(meta))
        self.save(self.rng.uniform(0, 1000, (10, 11, 9)).astype(np.float32), d / f"{sub}_T1w.nii.gz")
        if row:
            self.rows.append({"participant_id": sub, "group": group, "age": age, "sex": sex})
        return d

    def path(self, sub: str, echo: int, part: str, ext=".nii.gz") -> Path:
        return self.anat(sub) / f"{sub}_echo-{echo}_part-{part}_MEGRE{ext}"

    def write_participants(self, rows=None):
        import pandas as pd

        pd.DataFrame(rows if rows is not None else self.rows).to_csv(
            self.root / "participants.tsv", sep="\t", index=False, na_rep="n/a")


@pytest.fixture
def bids_factory(tmp_path):
    return BIDSFactory(tmp_path / "bids")
