"""docs/benchmarks.md is generated from bench/results, and ``python -m bench.report --check`` says when it is not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import report


def test_the_doc_matches_the_stored_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.check() == 0, capsys.readouterr().err


def test_check_catches_a_changed_figure_a_hand_typed_table_and_a_missing_result(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    text = report.DOC.read_text()
    queue = re.search(r"<!-- bench\.report: summary goals -->\n(.*?)<!-- /bench\.report -->", text, re.S)
    assert queue and "| queue (no goal) | submit " in queue.group(1)
    doc = tmp_path / "benchmarks.md"
    doctored = text.replace("| queue (no goal) | submit ", "| queue (no goal) | submit 1", 1)
    doc.write_text(doctored)
    assert report.check(doc) == 1
    assert "block 'summary goals' differs" in capsys.readouterr().err

    typed = "```\nmy table\nwhat  seconds\n----  -------\nx        1.00\n```\n"
    doc.write_text(doctored + "\n" + typed + "<!-- bench.report: table no_such_result 0 -->\n<!-- /bench.report -->\n")
    assert report.check(doc) == 1
    err = capsys.readouterr().err
    assert "outside a generated block" in err and "'my table'" in err
    assert "block 'table no_such_result 0'" in err

    assert report.write(doc) == 1  # it regenerates what it can and still reports what it cannot
    assert "| queue (no goal) | submit 1" not in doc.read_text()
