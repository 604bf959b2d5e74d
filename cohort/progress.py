"""A progress bar driven by futures as they complete."""

from __future__ import annotations

import sys

from distributed import as_completed
from tqdm.auto import tqdm


def track(futures, description: str, enabled: bool = True, stage_of: dict | None = None):
    """Yield futures as they complete, advancing one bar.

    The bar's postfix counts outcomes (``ok``, ``skipped``, ``failed``) when
    results are ``(status, ...)`` tuples, and with ``stage_of`` (future key ->
    stage name) how many of each stage are done (``qsm 12/20``).
    """
    counts: dict[str, int] = {}
    totals: dict[str, int] = {}
    for fut in futures:
        if stage_of:
            totals[stage_of[fut.key]] = totals.get(stage_of[fut.key], 0) + 1
    done_by_stage = dict.fromkeys(totals, 0)
    bar = tqdm(total=len(futures), desc=description, unit="subj", disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, leave=True)
    try:
        for fut in as_completed(futures):
            yield fut
            if fut.status == "finished":
                res = fut.result()
                status = res[0] if isinstance(res, tuple) and res and isinstance(res[0], str) else "ok"
            else:
                status = "failed"
            counts[status] = counts.get(status, 0) + 1
            post = {}
            if stage_of:
                done_by_stage[stage_of[fut.key]] += 1
                post = {st: f"{done_by_stage[st]}/{totals[st]}" for st in totals}
            bar.set_postfix({**post, **counts}, refresh=False)
            bar.update(1)
    finally:
        bar.close()


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_worker_memory(client) -> float:
    """Largest peak resident memory of any worker process so far, in GiB (NaN if unknown)."""
    try:
        peaks = client.run(_peak_rss_bytes)
    except Exception:  # a worker lost at the end must not hide the results
        return float("nan")
    return max(peaks.values(), default=0) / 2**30
