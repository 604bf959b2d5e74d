"""The installed distribution is one namespace, ``ferritin``, with one version."""

import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

import ferritin

ROOT = Path(__file__).resolve().parents[1]


def test_version_has_one_source():
    assert ferritin.__version__ == version("ferritin")
    assert "__version__" not in (ROOT / "engine" / "__init__.py").read_text()


def test_entry_points_resolve_lazily():
    from ferritin.cohort.access import open_cohort

    assert ferritin.open_cohort is open_cohort
    assert callable(ferritin.load_spec) and callable(ferritin.run_group)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ferritin.nope  # noqa: B018


@pytest.mark.slow
def test_wheel_installs_only_the_ferritin_namespace(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("ferritin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"ferritin", f"ferritin-{ferritin.__version__}.dist-info"}, top
    assert "ferritin/engine/default_study.yaml" in names
    # the report cannot be written without its template
    assert {"ferritin/engine/report/templates/report.html.j2", "ferritin/engine/report/templates/style.css"} <= set(names)
    assert "ferritin/cohort/store.py" in names and "ferritin/stats/rft.py" in names
    # every sub-package: a package the list in pyproject.toml forgets would be missing from installs
    assert {"ferritin/cohort/simulate/__init__.py", "ferritin/engine/anat/chain.py",
            "ferritin/engine/report/templates/methods.txt.j2"} <= set(names)
    assert not any(n.startswith(("ferritin/tests/", "ferritin/benchmarks/")) for n in names)
    # the repository root is the package's folder: only its __init__ may ship from there, every other
    # file lives in one of the three layers (a stray script at the root would land in site-packages)
    outside = [n for n in names if n.startswith("ferritin/") and n != "ferritin/__init__.py"
               and not n.startswith(("ferritin/engine/", "ferritin/cohort/", "ferritin/stats/"))]
    assert not outside, outside
    # the brain extraction's networks travel with their licence
    models = "ferritin/engine/anat/models/deepbet/"
    assert {f"{models}bbox_model.onnx", f"{models}model.onnx", f"{models}LICENSE"} <= set(names)
