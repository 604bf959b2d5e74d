"""A progress bar driven by futures as they complete."""

from __future__ import annotations

import sys

from distributed import as_completed
from tqdm.auto import tqdm


def track(futures, description: str, enabled: bool = True):
    """Yield futures as they complete, advancing one bar.

    The bar's postfix counts outcomes (``ok``, ``skipped``, ``failed``) when
    results are ``(status, ...)`` tuples.
    """
    counts: dict[str, int] = {}
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
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
    finally:
        bar.close()
