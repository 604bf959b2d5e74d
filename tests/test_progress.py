"""The progress bar counts per stage from futures as they complete; the run summary says it all."""

from ferritin.cohort.progress import peak_worker_memory, track
from ferritin.engine.pipeline import RunSummary


def _status(x):
    return ("written" if x % 2 else "skipped", f"sub-{x}", None)


def test_bar_counts_each_stage(client, capsys):
    futs = [client.submit(_status, i, key=f"qsm-sub-{i}") for i in range(3)]
    futs += [client.submit(_status, i, key=f"anat-sub-{i}") for i in range(2)]
    stage_of = {f.key: f.key.split("-")[0] for f in futs}
    seen = [f.key for f in track(futs, "participant", stage_of=stage_of)]
    assert sorted(seen) == sorted(f.key for f in futs)
    err = capsys.readouterr().err
    assert "qsm=3/3" in err and "anat=2/2" in err and "written=" in err and "skipped=" in err


def test_summary_and_peak_memory(client):
    s = RunSummary(done={"qsm": ["sub-1", "sub-2"]}, skipped={"anat": ["sub-1"]},
                   failed={"anat": {"sub-2": "sub-2: anatomy failed: boom"}}, seconds=12.5)
    s.peak_worker_gib = peak_worker_memory(client)
    text = s.text()
    assert "subjects: 1 done, 1 failed" in text and "FAILED sub-2: sub-2: anatomy failed: boom" in text
    assert 0.05 < s.peak_worker_gib < 24
