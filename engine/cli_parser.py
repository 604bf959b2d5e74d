"""The ``ferritin`` command line's arguments: one builder per sub-command."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferritin import __version__

__all__ = ["build_parser", "DESCRIPTION"]

DESCRIPTION = """\
ferritin: cohort studies of brain iron (QSM) and atrophy (VBM), in parallel with Dask.

Exit codes: 0 done (subjects that failed are listed and recorded; the rest went on), 1 nothing
could be processed, 2 a user error (bad arguments, dataset, spec or store path; the message says
what), 4 the store is in use by another run, 130 interrupted (run again to resume).

Typical use:
  ferritin convert DICOM_DIR my-bids --subject 01  # one subject's DICOM folder into BIDS
  ferritin simulate demo-bids --preset demo      # make a synthetic cohort (BIDS)
  ferritin ingest demo-bids cohort.zarr          # read it into a cohort store
  ferritin run demo-bids out participant         # per-subject QSM and anatomy
  ferritin run demo-bids out group               # group statistics and report
"""


def _location(text: str) -> Path | str:
    """A local path, or an object-store URL kept as text (a Path would fold its ``//``)."""
    from ferritin.cohort.store import is_url

    if is_url(text):
        scheme, _, rest = text.partition("://")
        if not rest.strip("/"):
            raise argparse.ArgumentTypeError(f"{text!r} names no bucket: {scheme}://BUCKET/path")
        return text
    return Path(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where to compute")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="address (tcp://host:8786) or scheduler file of a running Dask scheduler; "
                        "default: start a local cluster on this machine")
    g.add_argument("--cluster", choices=["local", "scheduler", "k8s", "slurm", "pbs"], metavar="KIND",
                   help="local (default), scheduler (address from the configuration), k8s (dask-kubernetes "
                        "operator) or slurm/pbs (dask-jobqueue); settings under 'ferritin.cluster' in Dask's "
                        "configuration")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="local worker processes (default: one per core); each runs one subject at a time")
    g.add_argument("--no-progress", action="store_true", help="do not draw progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``ferritin`` command line: one sub-command per step of a study."""
    parser = argparse.ArgumentParser(prog="ferritin", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ferritin {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _simulate_command(sub)
    _convert_command(sub)
    _ingest_command(sub)
    _run_command(sub)
    _spec_command(sub)
    _publish_command(sub)
    _unlock_command(sub)
    _report_command(sub)
    _demo_command(sub)
    _reproduce_command(sub)
    return parser


def _simulate_command(sub) -> None:
    """The ``ferritin simulate`` command's arguments."""
    p = sub.add_parser("simulate", help="write a synthetic cohort as a BIDS dataset with ground truth",
                       description="Simulate multi-echo GRE and T1w images of a cohort from the MNI template, "
                                   "with planted group effects, and write a BIDS dataset plus "
                                   "derivatives/ground-truth.")
    p.add_argument("out_bids", type=Path, help="folder to write the BIDS dataset into (must be empty or absent)")
    p.add_argument("--preset", default="demo", help="reference-study (34+34 at 1 mm), demo (10+10 at 3 mm), "
                                                    "tiny (2+2 at 3 mm) or null (no effects); default: demo")
    p.add_argument("--subjects", type=int, metavar="N", help="subjects per group (overrides the preset)")
    p.add_argument("--voxel-size", type=float, metavar="MM", help="isotropic voxel size in mm (overrides the preset)")
    p.add_argument("--echoes", type=int, metavar="N", help="number of echoes (overrides the preset)")
    p.add_argument("--snr", type=float, help="first-echo white-matter SNR (overrides the preset)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort); default 0")
    p.add_argument("--effects", type=Path, metavar="FILE",
                   help="plant these effects instead of the preset's (YAML list of name, region (AAL), peak_mni, "
                        "and optionally radius_mm, chi_ppm, gm_fraction, smooth_mm, severity_gain, gm_severity_gain, "
                        "gm_composition)")
    _add_cluster_args(p)


def _convert_command(sub) -> None:
    """The ``ferritin convert`` command's arguments."""
    p = sub.add_parser("convert", help="convert one subject's DICOM folder into a BIDS dataset (dcm2niix)",
                       description="Convert every series in DICOM_DIR with dcm2niix, find the T1w and the "
                                   "multi-echo GRE (magnitude and phase of each echo) from the DICOM fields, and "
                                   "write them with BIDS names and sidecars under BIDS_DIR/sub-LABEL; the subject "
                                   "is added to participants.tsv (fill in group, age, sex).")
    p.add_argument("dicom_dir", type=Path, help="folder with one subject's DICOM files (any sub-folders)")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset to add the subject to (created if absent)")
    p.add_argument("--subject", required=True, metavar="LABEL", help="participant label (01 or sub-01)")
    p.add_argument("--session", metavar="LABEL", help="session label, if the dataset has sessions")
    p.add_argument("--mapping", type=Path, metavar="FILE",
                   help="YAML/JSON lines 'SERIES_NUMBER: T1w | MEGRE | ignore' for series the rules cannot decide")
    p.add_argument("--force", action="store_true", help="replace the subject (or session) if it exists")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def _ingest_command(sub) -> None:
    """The ``ferritin ingest`` command's arguments."""
    p = sub.add_parser("ingest", help="read a BIDS dataset into a cohort store (Zarr)",
                       description="Validate a BIDS dataset and convert it into a cohort store, one Dask task per "
                                   "subject.  Subjects with problems are reported and skipped; re-running only "
                                   "converts subjects whose files changed.")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset root")
    p.add_argument("store", type=_location, help="cohort store to create or update (cohort.zarr, or "
                                                 "s3://bucket/cohort.zarr)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="only these subjects (01 or sub-01)")
    _add_cluster_args(p)


def _run_command(sub) -> None:
    """The ``ferritin run`` command's arguments."""
    p = sub.add_parser("run", help="run the study pipeline (participant or group level)",
                       description="BIDS-App entry point: per-subject QSM and anatomy (participant), then "
                                   "stacking, statistics and the report (group).")
    p.add_argument("bids_dir", type=Path, help="BIDS dataset root")
    p.add_argument("output_dir", type=_location, help="where the cohort store, tables and report go (a folder, or "
                                                      "s3://bucket/study)")
    p.add_argument("analysis_level", choices=["participant", "group"], help="which level to run")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="only these subjects")
    p.add_argument("--spec", type=Path, help="study spec (YAML); default: the reference study")
    _add_cluster_args(p)


def _spec_command(sub) -> None:
    """The ``ferritin spec`` command's arguments."""
    p = sub.add_parser("spec", help="print the study spec (the reference study by default)")
    p.add_argument("--default", action="store_true", help="print the built-in default spec")
    p.add_argument("--check", type=Path, metavar="FILE", help="validate a spec file and print it merged with the default")
    p.add_argument("bids_dir", type=Path, nargs="?", metavar="BIDS_DIR",
                   help="with --check: also check the spec against this dataset's participants.tsv (groups, "
                        "covariates, clinical columns)")
    p.add_argument("--reference", action="store_true", help="print every key of a spec, its default and meaning (Markdown)")


def _publish_command(sub) -> None:
    """The ``ferritin publish`` command's arguments."""
    p = sub.add_parser("publish", help="upload a cohort store to object storage (S3, GCS, ... via fsspec)",
                       description="Copy a finished cohort store to a URL, root metadata last, so that readers "
                                   "never see a half-uploaded store; read it with cohort.open_cohort(URL).")
    p.add_argument("store", type=Path, help="local cohort store (cohort.zarr)")
    p.add_argument("url", help="destination, e.g. s3://bucket/study/cohort.zarr")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, ...)")


def _unlock_command(sub) -> None:
    """The ``ferritin unlock`` command's arguments."""
    p = sub.add_parser("unlock", help="release the lock a killed run left on a cohort store",
                       description="A run holds its store's lock; a run killed on another machine cannot release "
                                   "it.  Only use this when that run no longer exists.")
    p.add_argument("store", type=_location, help="cohort store (cohort.zarr, or s3://bucket/cohort.zarr)")


def _report_command(sub) -> None:
    """The ``ferritin report`` command's arguments."""
    p = sub.add_parser("report", help="write report.html from a finished output folder")
    p.add_argument("output_dir", type=Path)


def _demo_command(sub) -> None:
    """The ``ferritin demo`` command's arguments."""
    p = sub.add_parser("demo", help="simulate a small cohort, run the whole study, write the report",
                       description="Simulate the reference-study design at a size that runs on a laptop, "
                                   "run everything and print where the report is.")
    p.add_argument("--out", type=Path, default=Path("ferritin-demo"), help="output folder (default ./ferritin-demo)")
    p.add_argument("--subjects", type=int, metavar="N", help="subjects per group")
    p.add_argument("--full", action="store_true", help="34 + 34 subjects at 1 mm (hours)")
    _add_cluster_args(p)


def _reproduce_command(sub) -> None:
    """The ``ferritin reproduce`` command's arguments."""
    p = sub.add_parser("reproduce", help="reproduce the reference study's results table on simulated cohorts",
                       description="Simulate the reference study's design (effects calibrated so that ferritin "
                                   "measures the published statistics) once per seed, run the whole study on "
                                   "each, and write every number of the paper's results beside ferritin's "
                                   "(OUT/reproduction.csv, OUT/reproduction_bars.csv, OUT/report.html).  A seed "
                                   "already run is measured again, not recomputed; an interrupted one goes on "
                                   "where it stopped when run again.")
    p.add_argument("out", type=Path, help="output folder (one sub-folder per seed)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="number of simulated cohorts (default 3)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="seed of the first cohort (default 0)")
    p.add_argument("--subjects", type=int, default=34, metavar="N", help="subjects per group (default 34)")
    p.add_argument("--voxel-size", type=float, default=3.0, metavar="MM",
                   help="simulated and MNI voxel size in mm (default 3; the study's 1 mm takes ~10x longer)")
    p.add_argument("--echoes", type=int, default=12, metavar="N", help="GRE echoes (default 12, as the study)")
    _add_cluster_args(p)
