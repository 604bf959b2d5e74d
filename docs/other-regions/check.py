"""Effects planted where the reference study found nothing: does ferritin find them, and nothing else?

Simulates the demo design (10 + 10 at 3 mm) with the effects of ``effects.yaml`` instead of the
reference study's, runs the study of ``study.yaml`` on it, and prints every planted effect's
recovery (a corrected result within 10 mm of its peak), the ROI ANCOVAs near them, and every
corrected result farther than 10 mm from all planted peaks (the false positives; the reference
study's left precentral gyrus and right thalamus are small volumes here with nothing planted).

    python docs/other-regions/check.py OUT [--seed 7]
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from ferritin import dask_client, load_spec, run_study, score_planted_effects, unplanted_results
from ferritin.cohort.simulate import preset, read_effects, simulate_cohort

HERE = Path(__file__).parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    effects = read_effects(HERE / "effects.yaml")
    sim = preset("demo", seed=args.seed, effects=effects)
    study = load_spec(HERE / "study.yaml")
    bids = args.out / "bids"
    with dask_client(None, args.workers, quiet=True) as client:
        if not (bids / "participants.tsv").exists():
            simulate_cohort(bids, sim, client=client)
        run_study(bids, args.out, study, client, levels=("participant",), progress=False)
    res = run_study(bids, args.out, study, levels=("group",), report=True)
    found, rois = score_planted_effects(res.group, effects, args.out)
    elsewhere = unplanted_results(res.group, effects)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("planted effects (found: a corrected result within 10 mm):")
        print(found[["effect", "contrast", "found", "source", "x", "y", "z", "distance_mm", "T", "p_fwe"]]
              .to_string(index=False))
        print("ROI ANCOVA near the planted effects:")
        print(rois.to_string(index=False))
        print(f"corrected results farther than 10 mm from every planted peak: {len(elsewhere)}")
        if len(elsewhere):
            print(elsewhere.to_string(index=False))
    svc = {c: {n: (t["p_fwe"].min() if len(t) else float("nan")) for n, t in r.get("svc", {}).items()}
           for c, r in res.group["contrasts"].items()}
    print("smallest p(FWE-SVC) per small volume:")
    print(pd.DataFrame(svc).to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
