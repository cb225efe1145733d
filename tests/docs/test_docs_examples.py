"""Every fenced code block of README.md and docs/*.md is checked, so the docs cannot rot.

Each block is one test, named after its file and line (`docs/train.md:120`). Shell commands are
parsed by the real CLI with their configs resolved, and the cheap ones run; Python blocks run;
curl and client examples run against a live `tunesmith serve`; JSON and YAML are validated by
the code that reads them. A block the harness cannot check must be marked, with a reason, by
an HTML comment right before its fence; see CONTRIBUTING.md ("Docs examples are tested").
"""

from __future__ import annotations

import pytest
from docblocks import all_pages
from docsession import Sessions
from tuned_helpers import one_thread

PAGES = all_pages()
BLOCKS = [(page, block) for page in PAGES for block in page.blocks]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    with one_thread():
        found = Sessions(tmp_path_factory.mktemp("docs"))
        try:
            yield found
        finally:
            found.close()


@pytest.mark.parametrize(("page", "block"), BLOCKS, ids=[block.id for _, block in BLOCKS])
def test_doc_example(page, block, sessions):
    outcome = sessions.page(page).outcome(block)
    if outcome.startswith(("skip:", "output:")):
        pytest.skip(f"marked {outcome}")


def test_markers_are_well_formed():
    problems = [problem for page in PAGES for problem in page.problems]
    assert not problems, "\n".join(problems)


def test_every_page_is_read():
    assert {p.path.as_posix() for p in PAGES} >= {"README.md", "docs/serve.md", "docs/train.md"}
    assert len(BLOCKS) >= 40, f"only {len(BLOCKS)} code blocks found: is the extraction broken?"
