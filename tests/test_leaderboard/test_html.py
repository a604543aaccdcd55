"""The static HTML leaderboard page: self-contained, escaped, CI and tie marking, reported rows
kept apart from measured ones."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record

from sslbench.cli import main
from sslbench.leaderboard.aggregation import aggregate, mark_ties
from sslbench.leaderboard.html import REPORTED_TITLE, render_html, render_html_dir, script_json
from sslbench.leaderboard.record import write_record
from sslbench.leaderboard.render import write_board
from sslbench.leaderboard.store import load_records

REPO = Path(__file__).resolve().parents[2]
EVIL = "<script>alert(1)</script>"


def seeds(values: list[float], **fields: Any) -> list[dict[str, Any]]:
    return [make_record(seed=i, metrics={"acc": v, "ood_acc": v - 0.2}, **fields)
            for i, v in enumerate(values)]


def reported(**fields: Any) -> dict[str, Any]:
    base = dict(kind="reported", backbone="resnet50", run_id=None, pretrain=None,
                provenance={}, wall_time_s=None, source="Chen et al. 2020, Table 6",
                recipe={"name": "paper", "path": None, "sha256": None},
                metrics={"acc": 0.693})
    base.update(fields)
    return make_record(**base)


class Page(HTMLParser):
    """Collects tags, attributes, and the text of each table's body rows."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.row_ids: dict[str, list[int]] = {}
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False
        self._script: dict[str, str | None] | None = None
        self._script_text: list[str] = []
        self._details = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id") or "?"
            self.tables[self._table], self.row_ids[self._table] = [], []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and "data-row" in a:
            self._row = []
            self.row_ids[self._table].append(int(a["data-row"]))
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "details":
            self._details += 1
        elif tag == "script":
            self._script, self._script_text = a, []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "details":
            self._details -= 1
        elif tag == "script" and self._script is not None:
            self.scripts.append((self._script, "".join(self._script_text)))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script_text.append(data)
        elif self._cell is not None and not self._details:
            self._cell.append(data)


def page_for(tmp_path: Path, *records: dict[str, Any]) -> str:
    results = tmp_path / "results"
    for i, rec in enumerate(records):
        write_record(results / f"b{i}", rec)  # own folder each: no file-name clashes
    return render_html(aggregate(load_records(results)))


def headers(page: Page, table: str) -> list[str]:
    """Column labels of one table (from the ``data-label`` of its header cells)."""
    labels, inside = [], None
    for tag, attrs in page.tags:
        if tag == "table":
            inside = attrs.get("id")
        elif inside == table and tag == "th":
            labels.append(attrs["data-label"])
    return labels


def column(page: Page, table: str, name: str) -> list[str]:
    """The visible text of one column, top to bottom (provenance details left out)."""
    assert table in page.tables, list(page.tables)
    index = headers(page, table).index(name)
    return [row[index] for row in page.tables[table]]


# ----------------------------------------------------------------------------- self-contained


def test_page_loads_nothing_remote(tmp_path: Path) -> None:
    text = page_for(tmp_path, *seeds([0.6, 0.62]), reported(source="https://arxiv.org/abs/x"))
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data", "poster", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith(("data:", "#")), (tag, name, value)
        assert tag not in ("iframe", "object", "embed", "img", "audio", "video", "base", "form")
        assert not (tag == "link" and attrs.get("rel") != "icon"), attrs
        assert not (tag == "script" and "src" in attrs)
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    # the only http(s) text is the reported record's source, shown as text, never as a link
    assert "https://arxiv.org/abs/x" in text
    assert re.findall(r"https?:", text.replace("https://arxiv.org/abs/x", "")) == []
    assert 'href="https' not in text and "url(" not in text and "@import" not in text


def test_csp_allows_only_the_inline_style_and_script(tmp_path: Path) -> None:
    text = page_for(tmp_path, *seeds([0.6]))
    page = Page(text)
    (csp,) = [a["content"] for t, a in page.tags
              if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    (script,) = [body for attrs, body in page.scripts if "type" not in attrs]

    def digest(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    assert "default-src 'none'" in csp
    assert f"style-src {digest(style)}" in csp
    assert f"script-src {digest(script)}" in csp
    assert "unsafe-inline" not in csp


# ----------------------------------------------------------------------------- escaping


def test_script_in_method_name_is_only_escaped() -> None:
    evil_backbone = '"><img src=x onerror=alert(2)>'
    # the loader refuses such names (record.schema.json); the page escapes them all the same
    text = render_html(aggregate([*seeds([0.6, 0.7], method=EVIL),
                                  make_record(method="byol", backbone=evil_backbone,
                                              dataset="a&b"),
                                  reported(method=EVIL, source=EVIL)]))
    assert EVIL not in text
    assert evil_backbone not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert [t for t, _ in page.tags].count("script") == 2
    assert [t for t, _ in page.tags].count("img") == 0
    # the text a browser shows is the original name, in table cells and SVG labels
    assert EVIL in column(page, "measured", "Method")
    assert any(evil_backbone in b for b in column(page, "measured", "Backbone"))
    assert EVIL in column(page, "reported", "Source")[0]
    plots = text.split("<h2>Plots</h2>")[1].split("<footer")[0]
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>" in plots  # SVG label tooltip
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in plots  # SVG text
    # the JSON handed to the script round-trips and never contains < > &
    (block,) = [b for a, b in page.scripts if a.get("type") == "application/json"]
    assert not set("<>&") & set(block)
    data = json.loads(block)
    assert EVIL in {r["method"] for r in data["rows"]}
    assert "a&b" in {r["dataset"] for r in data["rows"]}


def test_script_json_escapes_markup() -> None:
    text = script_json({"m": "</script><!--&", "n": 1})
    assert text == '{"m": "\\u003c/script\\u003e\\u003c!--\\u0026", "n": 1}'
    assert json.loads(text) == {"m": "</script><!--&", "n": 1}


# ----------------------------------------------------------------------------- CI and ties


def test_mean_and_ci_in_table(tmp_path: Path) -> None:
    page = Page(page_for(tmp_path, *seeds([0.60, 0.62, 0.64]),
                         make_record(method="byol", metrics={"acc": 0.5})))
    acc = dict(zip(column(page, "measured", "Method"), column(page, "measured", "Top-1 (%)")))
    assert acc["simclr"] == "62.0 ± 5.0"  # t(0.975, 2) * 0.02 / sqrt(3)
    assert acc["byol"] == "50.0"
    seeds_col = dict(zip(column(page, "measured", "Method"), column(page, "measured", "Seeds")))
    assert seeds_col == {"simclr": "3", "byol": "1"}
    ood = dict(zip(column(page, "measured", "Method"), column(page, "measured", "OOD (%)")))
    assert ood == {"simclr": "42.0 ± 5.0", "byol": "–"}


def _row(mean: float, ci: float | None, **fields: Any) -> dict[str, Any]:
    row = {"kind": "measured", "dataset": "d", "protocol": "linear", "method": "m",
           "backbone": "b", "recipe": "r", "protocol_settings": {},
           "metrics": {"acc": {"n": 1 if ci is None else 3, "mean": mean, "std": 0.0,
                               "ci95": ci}}}
    row.update(fields)
    return row


def test_tie_marking_logic() -> None:
    rows = [
        _row(0.70, 0.05, method="best"),
        _row(0.66, 0.02, method="overlaps"),            # [0.64, 0.68] vs [0.65, 0.75]
        _row(0.60, 0.03, method="apart"),               # [0.57, 0.63]: below 0.65
        _row(0.68, None, method="single-inside"),       # a point inside the best CI
        _row(0.64, None, method="single-outside"),
        _row(0.62, 0.031, method="touches"),            # hi = 0.651 >= 0.65
        _row(0.90, 0.01, method="other-protocol", protocol="knn"),
        _row(0.99, None, method="reported", kind="reported"),
        _row(0.95, 0.01, method="few-labels", protocol_settings={"label_fraction": 0.1}),
    ]
    marks = mark_ties(rows)
    named = {rows[i]["method"]: (m, rows[b]["method"]) for i, (m, b) in marks.items()}
    assert named == {
        "best": ("best", "best"), "overlaps": ("tie", "best"),
        "single-inside": ("tie", "best"), "touches": ("tie", "best"),
        "other-protocol": ("best", "other-protocol"), "reported": ("best", "reported"),
        "few-labels": ("best", "few-labels"),
    }


def test_tie_badges_in_page(tmp_path: Path) -> None:
    page = Page(page_for(
        tmp_path, *seeds([0.70, 0.72, 0.74], method="byol"),
        *seeds([0.66, 0.70, 0.74], method="dino"),          # wide CI reaching byol's
        *seeds([0.40, 0.41, 0.42], method="simclr"),
        *seeds([0.30, 0.31], method="mae", protocol="knn")))
    marks = dict(zip(column(page, "measured", "Method"), column(page, "measured", "vs best")))
    assert marks == {"byol": "best", "dino": "tie", "simclr": "", "mae": "best"}


# ----------------------------------------------------------------------------- layout


def test_reported_rows_are_kept_apart(tmp_path: Path) -> None:
    text = page_for(tmp_path, *seeds([0.6, 0.62]),
                    reported(method="simclr", metrics={"acc": 0.99}),
                    reported(method="byol", metrics={"acc": 0.74}, source="Grill et al. 2020"))
    page = Page(text)
    assert column(page, "measured", "Method") == ["simclr"]
    assert column(page, "measured", "vs best") == ["best"]  # a paper's 99% is not the best here
    assert column(page, "reported", "Method") == ["simclr", "byol"]
    assert column(page, "reported", "Source") == ["Chen et al. 2020, Table 6", "Grill et al. 2020"]
    assert column(page, "reported", "vs best") == ["best", ""]
    assert text.index(REPORTED_TITLE) > text.index('id="measured"')
    assert text.index('id="reported"') > text.index(REPORTED_TITLE)
    assert "Reported in papers (not measured here)" in text
    plots = text.split("<h2>Plots</h2>")[1].split("<footer")[0]
    assert "resnet50" not in plots and "resnet18" in plots  # plots show measured rows only


def test_no_reported_rows_still_has_the_section(tmp_path: Path) -> None:
    text = page_for(tmp_path, *seeds([0.6]))
    assert REPORTED_TITLE in text and "No reported results." in text
    assert 'id="reported"' not in text


def test_filters_list_every_value_and_label_fraction(tmp_path: Path) -> None:
    text = page_for(
        tmp_path, *seeds([0.6]),
        make_record(method="byol", backbone="vit_small", dataset="cifar10", protocol="knn"),
        make_record(method="byol", protocol_settings={"solver": "lbfgs", "label_fraction": 0.1}))
    page = Page(text)
    options: dict[str, list[str]] = {}
    current = None
    for tag, attrs in page.tags:
        if tag == "select":
            current = attrs["data-filter"]
            options[current] = []
        elif tag == "option":
            options[current].append(attrs["value"])
    assert options == {"dataset": ["", "cifar10", "embedded"], "protocol": ["", "linear", "knn"],
                       "backbone": ["", "resnet18", "vit_small"], "lf": ["", "100%", "10%"]}
    assert sorted(column(page, "measured", "Labels")) == ["10%", "100%", "100%"]


def test_label_fraction_column_hidden_without_any(tmp_path: Path) -> None:
    page = Page(page_for(tmp_path, *seeds([0.6])))
    assert "Labels" not in headers(page, "measured")
    assert "Label fraction" in page_for(tmp_path / "x", *seeds([0.6]))  # the filter is there


def test_sortable_headers_and_row_data(tmp_path: Path) -> None:
    page = Page(page_for(tmp_path, *seeds([0.6]), make_record(method="byol")))
    sortable = {a["data-label"]: (a["data-key"], a["data-type"]) for t, a in page.tags
                if t == "th" and a.get("data-key")}
    assert sortable["Top-1 (%)"] == ("acc", "num")
    assert sortable["Method"] == ("method", "text")
    (block,) = [b for a, b in page.scripts if a.get("type") == "application/json"]
    rows = json.loads(block)["rows"]
    ids = page.row_ids["measured"]
    assert [rows[i]["method"] for i in ids] == column(page, "measured", "Method")
    assert all(isinstance(rows[i]["acc"], float) for i in ids)


def test_provenance_details(tmp_path: Path) -> None:
    recs = seeds([0.6, 0.62], provenance={"git_commit": "feedface" * 5, "device": "NVIDIA H100"})
    recs.append(make_record(seed=0, created="2026-02-01T00:00:00+00:00",
                            metrics={"acc": 0.61},
                            provenance={"git_commit": "abc", "device": "cpu"}))
    text = page_for(tmp_path, *recs)
    page = Page(text)
    (i,) = page.row_ids["measured"]
    assert column(page, "measured", "Provenance") == ["3 records"]
    assert f'aria-controls="prov-{i}"' in text
    details = re.search(rf'<tr class="prov-row" id="prov-{i}" data-prov="{i}" hidden>.*?</tr>',
                        text, re.S).group(0)
    assert "recipes/quickstart.yaml" in details
    assert "feedfacefeed" in details and ">abc<" in details
    assert "NVIDIA H100, cpu" in details
    assert "50.0 s" in details  # pretraining wall time
    assert "3 file(s), 2 (seed, eval seed) pair(s)" in details


def test_plots_are_inline_svg(tmp_path: Path) -> None:
    text = page_for(tmp_path, *seeds([0.6, 0.62]), *seeds([0.5, 0.55], backbone="vit_small"),
                    make_record(method="raw_pixels", backbone="pixels", pretrain=None,
                                run_id=None, metrics={"acc": 0.2}))
    plots = text.split("<h2>Plots</h2>")[1]
    assert plots.count("<svg") == 3
    assert "Top-1 per method × backbone" in plots
    assert "In-distribution vs OOD top-1" in plots
    assert "Top-1 vs pretraining cost" in plots
    assert "No accuracy-vs-cost plot" not in plots
    assert "<svg" not in text.split("<h2>Plots</h2>")[0]


def test_plots_skip_missing_ood_and_cost_gracefully(tmp_path: Path) -> None:
    text = page_for(tmp_path, make_record(metrics={"acc": 0.5}, pretrain=None),
                    make_record(method="byol", metrics={"acc": 0.6},
                                pretrain={"steps": 3}))
    plots = text.split("<h2>Plots</h2>")[1]
    assert plots.count("<svg") == 1
    assert "No accuracy-vs-cost plot" in plots
    assert "In-distribution vs OOD" not in plots


def test_empty_board() -> None:
    text = render_html([])
    assert "No results yet." in text and "No measured results to plot yet." in text
    assert "<table" not in text


def test_committed_records_render(tmp_path: Path) -> None:
    page = Page(render_html_dir(REPO / "leaderboard" / "results"))
    methods = column(page, "measured", "Method")
    keys = list(zip(methods, *(column(page, "measured", c) for c in ("Backbone", "Protocol"))))
    assert len(keys) == len(set(keys))  # one row per method x backbone x protocol
    assert {"simclr", "raw_pixels", "random_init"} <= {m.split()[0] for m in methods}
    assert "reported" not in page.tables


# ----------------------------------------------------------------------------- writing


def test_write_board_html_and_cli(tmp_path: Path, capsys) -> None:
    board = tmp_path / "leaderboard"
    for rec in seeds([0.6, 0.7]):
        write_record(board / "results", rec)
    write_board(board)
    assert not (board / "index.html").exists()
    write_board(board, html=True)
    expected = render_html_dir(board / "results")
    assert (board / "index.html").read_text() == expected
    out = tmp_path / "site" / "board.html"
    assert main(["leaderboard", "--dir", str(board), "--format", "html", "--out", str(out)]) == 0
    assert out.read_text() == expected
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["leaderboard", "--dir", str(board), "--format", "html"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["leaderboard", "--dir", str(board), "--format", "pdf"]) == 2
    assert "md, json, csv, html" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_out_works_for_other_formats(tmp_path: Path, fmt: str) -> None:
    board = tmp_path / "leaderboard"
    write_record(board / "results", make_record())
    out = tmp_path / f"board.{fmt}"
    assert main(["leaderboard", "--dir", str(board), "--format", fmt, "--out", str(out), "-q"]) == 0
    assert out.read_text().strip()


def test_run_writes_index_html_when_leaderboard_render(tiny_recipe: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    """``sslbench run`` renders index.html next to LEADERBOARD.md (training stubbed out)."""
    import sslbench.run as run_mod
    from sslbench.recipe import load_recipe

    def fake_evaluate(cfg, recipe, kind, run_dir, *args, **kwargs):
        method = cfg.method.name if kind == "run" else kind
        rec = make_record(method=method, recipe=recipe)
        write_record(Path(cfg.leaderboard.dir) / "results", rec)
        return [rec]

    monkeypatch.setattr(run_mod, "pretrain", lambda *a, **k: {})
    monkeypatch.setattr(run_mod, "evaluate", fake_evaluate)
    for render_flag, board in ((True, "lb"), (False, "lb_off")):
        cfg = load_recipe(tiny_recipe, [f"leaderboard.dir={board}",
                                        f"leaderboard.render={str(render_flag).lower()}"])
        recipe = {"name": "tiny", "path": str(tiny_recipe), "sha256": "0" * 12}
        run_mod.run(cfg, recipe, tmp_path / "runs" / board, quiet=True)
        assert (Path(board) / "index.html").exists() is render_flag
        assert (Path(board) / "LEADERBOARD.md").exists() is render_flag
    text = Path("lb/index.html").read_text()
    assert text == render_html_dir(Path("lb/results"))
    assert "raw_pixels" in text and "simclr" in text


def test_non_finite_numbers_do_not_break_the_page() -> None:
    # a NaN metric is refused by the loader; the page survives it all the same
    text = render_html(aggregate([make_record(metrics={"acc": float("nan"), "ood_acc": 0.3},
                                              pretrain={"wall_time_s": float("inf")}),
                                  make_record(method="byol", metrics={"acc": 0.5})]))
    page = Page(text)
    assert column(page, "measured", "Top-1 (%)") == ["50.0", "–"]
    (block,) = [b for a, b in page.scripts if a.get("type") == "application/json"]
    assert [r["acc"] for r in json.loads(block)["rows"]] == [0.5, None]
    assert not re.search(r"\b(nan|inf|infinity)\b", text, re.I)
