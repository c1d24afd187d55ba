"""README.md starts with the two commands a newcomer runs, and CI runs its test command verbatim."""

from __future__ import annotations

import re

from conftest import REPO


def _code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_test_command():
    blocks = _code_blocks((REPO / "README.md").read_text())
    demo, tests = blocks[0], blocks[1]
    assert "adheat-simulate" in demo and " participant group" in demo and "torch==2.13.0" in demo
    assert "pytest" in tests
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_readme_has_no_unfilled_sections():
    text = (REPO / "README.md").read_text()
    assert not re.search(r"\b(OPTIONS_TABLE|SECTIONS|DEMO_MINUTES|DEMO_TIME|LEARNING_TABLE)\b", text)


def test_readme_options_table_matches_the_parser():
    """The options table in README.md is the parser's own (regenerate with cli.parser.options_markdown)."""
    from adheat_app.cli.parser import options_markdown

    assert options_markdown() in (REPO / "README.md").read_text()
