"""Both boards escape every string that comes from a record (issue 11, item 9): no raw HTML and
no Markdown syntax gets through, and a table keeps its columns."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record

from sslbench.leaderboard.aggregation import aggregate
from sslbench.leaderboard.html import render_html, render_html_dir
from sslbench.leaderboard.markdown import render_markdown
from sslbench.leaderboard.record import schema_problems, write_record
from sslbench.leaderboard.render import render

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>",
           "](javascript:alert(1))", "a | b\nc `d` *e* _f_ [g] ~~h~~ &amp; \\"]
RAW_HTML = ("<script", "<img", "<svg onload", "<svg/onload")


def split_row(line: str) -> list[str]:
    """Cells of a Markdown table row: split on pipes that no backslash escapes."""
    cells, cell, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            cell += line[i:i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += line[i]
        i += 1
    cells.append(cell)
    return [c.strip() for c in cells[1:-1]]


def check_markdown(md: str) -> None:
    for bad in RAW_HTML:
        assert bad not in md.lower(), bad
    for line in md.splitlines():  # no link: every "](" is escaped or inside a code span
        assert not re.search(r"(?<!\\)\]\(", re.sub(r"`[^`]*`", "", line)), line
    table: list[str] = []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
        elif table:  # every row of a table has the header's number of cells
            widths = {len(split_row(row)) for row in table}
            assert len(widths) == 1, table
            table = []


class Tags(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def check_html(page: str) -> None:
    for bad in RAW_HTML[:1]:
        assert f"{bad}>alert" not in page.lower()
    assert "<img" not in page.lower() and "<svg onload" not in page.lower()
    tags = Tags(page).tags
    assert [t for t, _ in tags].count("script") == 2  # the data block and the board's script
    assert not [t for t, _ in tags if t in ("img", "iframe", "object", "embed")]
    assert not [(t, a) for t, a in tags for name in a if name.startswith("on")]


def free_text_records(evil: str) -> list[dict[str, Any]]:
    """Records whose hostile strings sit in free-text fields: the loader accepts them."""
    recipe = {"name": "quickstart", "path": evil, "sha256": evil}
    provenance = {"git_commit": evil, "git_dirty": False, "device": evil}
    return [
        make_record(seed=0, recipe=recipe, provenance=provenance,
                    protocol_settings={"solver": evil, "C": 0.1, evil: evil}),
        make_record(seed=1, recipe=dict(recipe, sha256="other"), provenance=provenance,
                    protocol_settings={"solver": evil, "C": 1.0, evil: evil},
                    metrics={"acc": 0.7, "ood_acc": 0.5}),
        make_record(method="byol", protocol="knn", protocol_settings={"k": evil}),
        make_record(kind="reported", source=evil, run_id=None, pretrain=None,
                    provenance={"device": evil}, wall_time_s=None,
                    recipe={"name": "paper", "path": evil, "sha256": None}),
    ]


@pytest.mark.parametrize("evil", HOSTILE)
def test_free_text_fields_are_escaped_through_the_loader(tmp_path: Path, evil: str) -> None:
    results = tmp_path / "results"
    for i, rec in enumerate(free_text_records(evil)):
        write_record(results / f"b{i}", rec)
    md = render(results, "md")
    check_markdown(md)
    assert "simclr" in md and "Reported in papers" in md
    check_html(render_html_dir(results))


def name_records(evil: str) -> list[dict[str, Any]]:
    """Records with hostile names: refused by the loader, so the rows are rendered directly."""
    recipe = {"name": evil, "path": evil, "sha256": "a"}
    return [
        make_record(method=evil, backbone=evil, dataset=evil, recipe=recipe,
                    provenance={"device": evil, "git_commit": evil},
                    protocol_settings={"solver": evil, evil: evil}),
        make_record(method=evil, backbone=evil, dataset=evil, seed=1,
                    recipe=dict(recipe, sha256="b"), protocol_settings={"solver": evil, evil: evil},
                    metrics={"acc": 0.7, "ood_acc": 0.5}),
        make_record(method="byol", backbone=evil, dataset=evil, protocol=evil,
                    protocol_settings={"k": evil}),
        make_record(method="byol", backbone=evil, dataset=evil, protocol=evil,
                    protocol_settings={"k": 1}),
        make_record(kind="reported", method=evil, backbone=evil, dataset=evil, source=evil,
                    protocol=evil, run_id=None, pretrain=None, provenance={}, wall_time_s=None,
                    recipe={"name": evil, "path": None, "sha256": None}),
    ]


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_names_are_refused_by_the_loader_and_escaped_by_both_boards(evil: str) -> None:
    records = name_records(evil)
    for rec in records:
        assert any("must be a safe name" in p for p in schema_problems(rec)), rec["method"]
    rows = aggregate(records)
    md = render_markdown(rows)
    check_markdown(md)
    assert "### " in md and "other settings" in md  # the settings-variant heading too
    assert "mixes 2 versions of its recipe" in md
    check_html(render_html(rows))


def test_markdown_shows_the_original_text() -> None:
    """Escaping keeps the text: entities and backslash escapes render as the original."""
    evil = "<b>x</b> | y"
    md = render_markdown(aggregate([make_record(method=evil, metrics={"acc": 0.5})]))
    (row,) = [line for line in md.splitlines() if line.startswith("| &lt;b&gt;")]
    assert split_row(row)[0] == "&lt;b&gt;x&lt;/b&gt; \\| y"
    md = render_markdown(aggregate([make_record(method="*e* _f_ [g](h) `d` ~~s~~")]))
    assert "| \\*e\\* \\_f\\_ \\[g\\](h) \\`d\\` \\~\\~s\\~\\~ |" in md
    plain = make_record(method="raw_pixels", backbone="test_resnet")
    assert "| raw_pixels | test_resnet |" in render_markdown(aggregate([plain]))
