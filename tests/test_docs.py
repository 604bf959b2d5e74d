"""The documents a user reads first: the README stays a front page and its links resolve."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text(encoding="utf-8")) if "://" not in t]


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; figures and narrative belong in docs/"
    assert max(len(line) for line in lines) <= 200, "a README line over 200 characters is narrative, not a front page"


def test_every_relative_link_in_the_documents_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = [(d.name, t) for d in docs for t in _relative_links(d) if not (d.parent / t).exists()]
    assert not missing, f"links to files that do not exist: {missing}"
