"""The ``ferritin`` command line (BIDS-App shaped)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from .cli_parser import build_parser


def _cmd_simulate(args) -> int:
    from ferritin.cohort.simulate import preset, read_effects, simulate_cohort, unfinished_simulation

    overrides = {"seed": args.seed}
    if args.voxel_size:
        overrides["voxel_size"] = args.voxel_size
    if args.echoes:
        overrides["n_echoes"] = args.echoes
    if args.snr:
        overrides["snr"] = args.snr
    if args.effects:
        overrides["effects"] = read_effects(args.effects)
    spec = preset(args.preset, **overrides)
    if args.subjects:
        from dataclasses import replace

        spec = replace(spec, n_per_group={g: args.subjects for g in spec.n_per_group})
    if args.out_bids.exists() and any(args.out_bids.iterdir()):
        if not unfinished_simulation(args.out_bids):
            print(f"ferritin simulate: {args.out_bids} is not empty; choose a new folder", file=sys.stderr)
            return 2
        print(f"going on with the unfinished simulation in {args.out_bids} (subjects it finished are kept "
              "when they are the same simulation)")
    from .cluster import dask_client

    t0 = time.perf_counter()
    with dask_client(args.scheduler, args.workers, quiet=True, kind=args.cluster) as client:
        table = simulate_cohort(args.out_bids, spec, client=client, progress=not args.no_progress)
    print(f"wrote {len(table)} subjects to {args.out_bids} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_convert(args) -> int:
    from ferritin.cohort.dicom import convert_dicom, read_mapping

    t0 = time.perf_counter()
    mapping = read_mapping(args.mapping) if args.mapping else None
    result = convert_dicom(args.dicom_dir, args.bids_dir, args.subject, args.session, mapping, args.force,
                           progress=not args.no_progress)
    print(f"found in {args.dicom_dir}:")
    print(result.plan.describe())
    print(f"wrote {len(result.written)} images to {result.subject_dir} in {time.perf_counter() - t0:.1f} s")
    if result.participant_added:
        print(f"added {result.subject_dir.relative_to(args.bids_dir).parts[0]} to "
              f"{args.bids_dir / 'participants.tsv'}: fill in its group, age and sex")
    return 0


def _cmd_ingest(args) -> int:
    from .cluster import dask_client
    from .ingest import ingest

    t0 = time.perf_counter()
    with dask_client(args.scheduler, args.workers, quiet=True, kind=args.cluster) as client:
        if not args.no_progress:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        result = ingest(args.bids_dir, args.store, client, args.participant_label, progress=not args.no_progress)
    print(result.summary())
    print(f"store: {args.store}  ({time.perf_counter() - t0:.1f} s)")
    return 1 if result.failed and not (result.written or result.skipped) else 0


def _cmd_spec(args) -> int:
    from .spec import default_spec_text, load_spec

    if args.reference:
        from .spec_reference import spec_reference

        print(spec_reference())
        return 0
    if args.check:
        spec = load_spec(args.check)
        if args.bids_dir is not None:
            from .preflight import check_spec_against_dataset

            check_spec_against_dataset(spec, args.bids_dir)
        print(spec.to_yaml())
        return 0
    print(default_spec_text())
    return 0


def _cmd_run(args) -> int:
    from .cluster import dask_client
    from .spec import load_spec
    from .study import run_study

    spec = load_spec(args.spec)
    out = args.output_dir
    t0 = time.perf_counter()
    if args.analysis_level == "participant":
        with dask_client(args.scheduler, args.workers, quiet=True, kind=args.cluster) as client:
            if not args.no_progress:
                print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
            res = run_study(args.bids_dir, out, spec, client, levels=("participant",),
                            participant_label=args.participant_label, progress=not args.no_progress)
        print(res.ingest.summary())
        print(res.participants.text())
        return 0
    res = run_study(args.bids_dir, out, spec, levels=("group",))
    _print_group(res.group)
    print(f"tables, maps and BIDS derivatives in {out}  ({time.perf_counter() - t0:.1f} s)")
    if not res.report:  # the statistics are written; the report's failure is a bug to report, not success
        print(f"ferritin run group: report.html was not written (the reason above); the tables and maps are in "
              f"{out}", file=sys.stderr)
        return 1
    print(f"report: {res.report}")
    return 0


def _cmd_publish(args) -> int:
    from ferritin.cohort.remote import publish

    opts = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    n = publish(args.store, args.url, opts)
    print(f"published {n} objects to {args.url}")
    return 0


def _cmd_unlock(args) -> int:
    from ferritin.cohort.store import CohortStore

    held = CohortStore(args.store).break_lock()
    if held is None:
        print(f"{args.store} was not locked")
    else:
        print(f"released the lock of {held.get('purpose', '?')} (pid {held.get('pid', '?')} on "
              f"{held.get('host', '?')} since {held.get('started', '?')})")
    return 0


def _cmd_report(args) -> int:
    from .report import build_report

    path = build_report(args.output_dir)
    print(f"report: {path}")
    return 0


def _print_group(res) -> None:
    print(f"group statistics on {len(res.subjects)} subjects; excluded {len(res.excluded)}")
    for warning in res.warnings:
        print(f"WARNING: {warning}")
    for sub, why in sorted(res.excluded.items()):
        print(f"  excluded {sub}: {why}")
    for name, c in res.contrasts.items():
        print(f"{name}: FWHM {np.round(c.fwhm_mm, 1).tolist()} mm, {len(c.table)} peaks at T >= {c.u:.2f}")
        for region, t in c.svc.items():
            if "p_fwe" in t.columns and len(t):
                best = t.iloc[0]
                print(f"  SVC {region}: peak ({best.x:.0f}, {best.y:.0f}, {best.z:.0f}) T = {best['T']:.2f}, "
                      f"p(FWE-SVC) = {best.p_fwe:.3g}")
            else:
                print(f"  SVC {region}: no voxel above threshold")


def _print_recovery(res: dict, effects, out: Path) -> None:
    """On a simulated cohort: which planted effects the run found (tables/planted_effects.csv)."""
    from .recovery import score_planted_effects, unplanted_results

    effects = list(effects)
    if not effects:
        return
    found, rois = score_planted_effects(res, effects, out)
    elsewhere = unplanted_results(res, effects)
    print("planted effects (a corrected result within 10 mm of the planted peak):")
    for _, r in found.iterrows():
        where = (f"{r.source} peak ({r.x:.0f}, {r.y:.0f}, {r.z:.0f}) {r.distance_mm:.0f} mm away, T = {r['T']:.2f}, "
                 f"p(FWE) = {r.p_fwe:.3g}") if r.found else "not found" if r.planted else "nothing planted in this map"
        print(f"  {r.effect} / {r.contrast}: {where}")
    for _, r in rois.iterrows():
        print(f"  {r.effect}: ROI {r.roi} {r['map']} difference {r.difference:+.4g}, ANCOVA p = {r.p:.3g}")
    print(f"corrected results farther than 10 mm from every planted peak: {len(elsewhere)}")
    for _, r in elsewhere.iterrows():
        print(f"  {r.contrast}: {r.source} peak ({r.x:.0f}, {r.y:.0f}, {r.z:.0f}), T = {r['T']:.2f}, "
              f"p(FWE) = {r.p_fwe:.3g}")


def _print_reproduction(out: Path, effects=()) -> None:
    """Which of the reference study's findings the demo reproduces, with what its size lets it expect."""
    from .reproduction import findings_at_size, measure_run, summarise
    from .tables import write_csv

    measured = measure_run(out)
    power = findings_at_size(out, measured, effects)
    write_csv(summarise([measured]), out / "tables" / "reproduction.csv", index=False)
    write_csv(power, out / "tables" / "reproduction_power.csv", index=False)
    print("the reference study's findings at this size (expected T at the planted effects' size; power at this df):")
    for _, r in power.iterrows():
        verdict = "reproduced" if r.reproduced else "not reproduced"
        print(f"  {r.finding} ({r.published}): {verdict}: T = {r['measured T']:.2f}, P = {r.P:.3g}; "
              f"expected T {r['expected T']:.2f}, needs {r['T needed']:.2f}, power {r.power:.0%}")


def _cmd_demo(args) -> int:
    from dataclasses import replace

    from ferritin.cohort.simulate import CALIBRATED_EFFECTS, power_matched_effects, preset, simulate_cohort

    from .cluster import dask_client
    from .spec import load_spec
    from .study import run_study, write_report

    spec = preset("reference-study") if args.full else preset("demo")
    if args.subjects:
        # keep the reference study's power whatever the size (see power_matched_effects)
        spec = replace(spec, n_per_group={g: args.subjects for g in spec.n_per_group},
                       effects=power_matched_effects(CALIBRATED_EFFECTS, args.subjects))
    out = args.out
    bids = out / "bids"
    t0 = time.perf_counter()
    study = replace(load_spec(), mni_voxel_size=max(2.0, spec.voxel_size))
    with dask_client(args.scheduler, args.workers, quiet=True, kind=args.cluster) as client:
        print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        if not (bids / "participants.tsv").exists():
            n = sum(spec.n_per_group.values())
            print(f"simulating {n} subjects at {spec.voxel_size} mm into {bids}", file=sys.stderr)
            simulate_cohort(bids, spec, client=client, progress=not args.no_progress)
        res = run_study(bids, out, study, client, levels=("participant",), progress=not args.no_progress)
        print(res.ingest.summary())
        print(res.participants.text())
    res = run_study(bids, out, study, levels=("group",), report=False)
    _print_group(res.group)
    _print_recovery(res.group, spec.effects, out)  # scored before the report, which shows the scores
    _print_reproduction(out, spec.effects)
    report = write_report(out)
    print(f"cohort store: {res.store}  (open with xarray.open_datatree(path, engine='zarr'))")
    print(f"tables and maps: {out / 'tables'}, {out / 'group'}")
    print(f"ground truth: {bids / 'derivatives' / 'ground-truth'}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    if report:
        print(f"report: {report.absolute()}")
    return 0


def _cmd_reproduce(args) -> int:
    from .cluster import dask_client
    from .reproduction import reproduce

    if args.seeds < 1 or args.subjects < 3 or args.voxel_size <= 0 or args.echoes < 1:
        print("ferritin reproduce: --seeds >= 1, --subjects >= 3, --voxel-size > 0 and --echoes >= 1",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with dask_client(args.scheduler, args.workers, quiet=True, kind=args.cluster) as client:
        summary, bars = reproduce(args.out, seeds, client, n_per_group=args.subjects, voxel_size=args.voxel_size,
                                  n_echoes=args.echoes, progress=not args.no_progress)
    print(f"{'finding':<72s} {'published':>9s} {'ferritin':>16s}")
    for _, r in summary.iterrows():
        sd = f" ± {r.sd:.2f}" if r.sd == r.sd else ""
        print(f"{r.finding:<72s} {r.published:>9.3g} {r['mean']:>9.3g}{sd:<7s}")
    print(f"bars met: {int(bars['met'].sum())} of {len(bars)}")
    for _, b in bars.iterrows():
        print(f"  [{'x' if b.met else ' '}] {b.bar}: {b.measured}")
    print(f"report: {(args.out / 'report.html').absolute()}  ({time.perf_counter() - t0:.0f} s)")
    return 0


COMMANDS = {
    "reproduce": _cmd_reproduce,
    "convert": _cmd_convert,
    "simulate": _cmd_simulate,
    "ingest": _cmd_ingest,
    "run": _cmd_run,
    "spec": _cmd_spec,
    "report": _cmd_report,
    "publish": _cmd_publish,
    "unlock": _cmd_unlock,
    "demo": _cmd_demo,
}


class DaskChatterFilter(logging.Filter):
    """Dask's own chatter (connections, worker start-up) only when asked for (``-vv``).

    distributed gives its sub-loggers levels of their own, so a level on the
    parent does not reach them: the filter sits on the handler instead.  Its
    P2P rechunks log their start and end as warnings (one pair per rechunk of
    the group level): those pass only at ``-vv`` too; their errors always do.
    """

    loggers = ("distributed", "bokeh", "tornado")
    _lifecycle = "distributed.shuffle"

    def __init__(self, verbose: int = 0):
        super().__init__()
        self.level = logging.DEBUG if verbose >= 2 else logging.WARNING
        self._lifecycle_level = self.level if verbose >= 2 else logging.ERROR

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self._lifecycle):
            return record.levelno >= self._lifecycle_level
        return record.levelno >= self.level or not record.name.startswith(self.loggers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    chatter = DaskChatterFilter(args.verbose)
    for name in DaskChatterFilter.loggers:
        logging.getLogger(name).setLevel(chatter.level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(chatter)
    from ferritin.cohort.errors import FerritinError
    from ferritin.cohort.store import StoreLocked

    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that closed the pipe is met here, not at exit
        return code
    except BrokenPipeError:  # `ferritin spec --default | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except StoreLocked as exc:
        print(f"ferritin {args.command}: {exc}", file=sys.stderr)
        return 4
    except FerritinError as exc:  # a user error the command did not handle itself: a message, no traceback
        print(f"ferritin {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nferritin {args.command}: interrupted; what was finished is kept, run the same command "
              "again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
