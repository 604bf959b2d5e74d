"""`reconstruct_qsm` of this checkout against another one, on the same phantom, in alternating processes.

Run by hand:  .venv/bin/python benchmarks/qsm_versions.py BASELINE_TREE [--rounds 2] [--shape 256 256 150]
                  [--echoes 12] [--plain-env]
              .venv/bin/python benchmarks/qsm_versions.py --against-plain-env [--rounds 2]

BASELINE_TREE is another checkout of ferritin (e.g. ``git worktree add /tmp/base <commit>``); it is
imported in place of this one by putting a folder named ``ferritin`` that links to it first on the
path.  Each round runs one fresh process per tree, baseline first, each reconstructing the phantom
twice: the first call pays for the memory the process has not used yet (as a pipeline worker's first
subject does), the second reuses it.  Printed per process: wall, user and system seconds of each
call, the NRMSE of χ against the phantom in the chain's mask, the mask's size; then the medians and
their ratio.  The phantom is `benchmarks/qsm.py`'s (1 mm head, 12 echoes).

Both trees' processes run with this checkout's worker environment (``WORKER_ENV`` of
``engine/cluster.py``: one numerical thread, freed memory kept for reuse), as the pipeline's
workers do; ``--plain-env`` runs them with the environment of the shell instead.
``--against-plain-env`` compares this checkout in the shell's environment with itself in the
workers' (what the environment alone is worth).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def child(args):
    import ferritin
    from ferritin.engine.qsm.chain import QSMParams, reconstruct_qsm

    d = np.load(args.phantom)
    mag, phase, te, b0, truth = d["mag"], d["phase"], d["te"], float(d["b0"]), d["chi"]
    calls = []
    for _ in range(2):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        chi, mask = reconstruct_qsm(mag, phase, te, np.eye(4), b0, QSMParams())
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        calls.append((time.perf_counter() - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
    err, ref = chi[mask] - truth[mask], truth[mask]
    nrmse = 100 * np.linalg.norm(err - err.mean()) / np.linalg.norm(ref - ref.mean())
    print(json.dumps({"tree": str(Path(ferritin.__file__).resolve().parent), "calls": calls, "nrmse": float(nrmse),
                      "mask": int(mask.sum())}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline", type=Path, nargs="?", help="another ferritin checkout")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 150])
    ap.add_argument("--echoes", type=int, default=12)
    ap.add_argument("--plain-env", action="store_true", help="not the pipeline workers' environment")
    ap.add_argument("--against-plain-env", action="store_true",
                    help="no baseline tree: this checkout in the shell's environment against the workers'")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phantom", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from ferritin.engine.cluster import WORKER_ENV

    here = Path(__file__).resolve().parents[1]
    worker_env = {} if args.plain_env else WORKER_ENV
    with tempfile.TemporaryDirectory() as tmp:
        if args.against_plain_env:
            variants = {"plain env": ("", {}), "worker env": ("", WORKER_ENV)}
        else:
            if args.baseline is None:
                ap.error("give a BASELINE_TREE, or --against-plain-env")
            baseline = args.baseline.resolve()
            if not (baseline / "engine" / "qsm" / "chain.py").exists():
                ap.error(f"{baseline} is not a ferritin checkout (no engine/qsm/chain.py)")
            link = Path(tmp) / "baseline"
            link.mkdir()
            (link / "ferritin").symlink_to(baseline)
            variants = {"baseline": (str(link), worker_env), "this": ("", worker_env)}
        for name, (_, env) in variants.items():
            print(f"{name}: environment", " ".join(f"{k}={v}" for k, v in env.items()) or "of the shell")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from qsm import phantom

        mag, phase, te, b0, chi, _ = phantom(tuple(args.shape), args.echoes)
        npz = Path(tmp) / "phantom.npz"
        np.savez(npz, mag=mag, phase=phase, te=te, b0=b0, chi=chi)
        del mag, phase, chi
        results = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, (path, extra) in variants.items():
                env = dict(os.environ, **extra)
                if path:
                    env["PYTHONPATH"] = path
                out = subprocess.run([sys.executable, __file__, "--child", "--phantom", str(npz)],
                                     env=env, cwd=tmp, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"the {name} run failed:\n{out.stderr}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(res)
                calls = "  ".join(f"{w:.1f} s (user {u:.1f}, sys {s:.1f})" for w, u, s in res["calls"])
                print(f"round {r} {name:10s} {res['tree']}: {calls}  NRMSE {res['nrmse']:.2f} %  "
                      f"mask {res['mask']}", flush=True)
    (first, a), (second, b) = ((k, np.median([c[0] for res in v for c in res["calls"]])) for k, v in results.items())
    print(f"median of all calls ({here.name}): {first} {a:.1f} s, {second} {b:.1f} s: {a / b:.2f}x")


if __name__ == "__main__":
    main()
