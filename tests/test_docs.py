"""The README and docs/: every relative link and image points at a file of the repository."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), with an optional "title"; <img src="target">.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\ssrc=\"([^\"]+)\"")


def relative_targets(page: Path) -> list[str]:
    text = re.sub(r"```.*?```|<!--.*?-->", "", page.read_text(), flags=re.S)  # commands and comments, not links
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]  # http:, mailto:, #anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_exists(page):
    missing = [t for t in relative_targets(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_readme_shows_images_of_the_repository_each_under_200_kb():
    images = [t for t in relative_targets(ROOT / "README.md") if t.endswith(".png")]
    assert images, "the README shows no image"
    for image in images:
        assert (ROOT / image).stat().st_size < 200_000, image


def test_link_finder_sees_links_images_and_skips_urls_anchors_and_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '[a](docs/a.md) ![b](img/b.png "title") [c](docs/c.md#part) <img src="img/d.png" width="300">\n'
        "[e](https://example.org) [f](#anchor) `[g](not/a/link.md)` <!-- [i](later.md) -->\n"
        "```\n[h](code/block.md)\n```\n"
    )
    assert relative_targets(page) == ["docs/a.md", "img/b.png", "docs/c.md#part", "img/d.png"]


def test_ci_runs_the_readme_test_command_word_for_word():
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", (ROOT / "README.md").read_text())
    test_command = next(command for command in commands if command.endswith("python -m pytest"))
    assert "-c constraints.txt" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_test_has_a_time_limit_so_a_hang_fails_ci_rather_than_holding_it(pytestconfig):
    # A grid worker that loops forever (claim_point) would hold the suite until CI is killed, naming no test.
    assert pytestconfig.pluginmanager.hasplugin("timeout")  # pytest-timeout, from requirements.txt
    assert float(pytestconfig.getini("timeout")) == 600
