"""The docs say what the code does (STYLE §8)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tally.settings import SETTINGS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented_with_its_flag_and_variable():
    text = (DOCS / "configuration.md").read_text()
    for setting in SETTINGS:
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| {setting.name} |")), ""
        )
        assert f"`{setting.flag}`" in row, setting.name
        assert f"`{setting.envvar}`" in row, setting.name


def test_cli_reference_is_generated_from_the_current_help():
    spec = importlib.util.spec_from_file_location("generate_cli", DOCS / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "cli.md").read_text() == module.render(), "run: python docs/generate_cli.py"


def test_readme_shows_the_two_commands_and_links_docs_that_exist():
    readme = (DOCS.parent / "README.md").read_text()
    assert "make serve" in readme
    assert "make test" in readme
    for link in ("configuration.md", "cli.md", "tracking.md", "http-api.md", "log-format.md",
                 "benchmarks.md"):  # fmt: skip
        assert f"docs/{link}" in readme
        assert (DOCS / link).exists(), link


def test_every_report_kind_and_filter_op_is_documented():
    from tally.reports.query import FILTER_OPS, KINDS

    text = (DOCS / "reports.md").read_text()
    for kind in KINDS:
        assert f"\n## {kind}\n" in text, kind
    for op in FILTER_OPS:
        assert f"`{op}`" in text, op
    assert "docs/reports.md" in (DOCS.parent / "README.md").read_text()
