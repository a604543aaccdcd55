"""Pretraining FLOPs, test-set standard errors and evaluation-set sizes on the board: aggregated
means in the rows, their text in Markdown, HTML, JSON, CSV and the W&B table, the accuracy-vs-
FLOPs plot, ``_se`` metrics kept out of columns, ranking and pairing, and ``leaderboard compare``
on the aggregation's paired interval with its output unchanged."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record
from test_escaping import HOSTILE, check_html, check_markdown, split_row
from test_html import Page, column, headers

from sslbench.leaderboard.aggregation import aggregate, mark_ties, paired_difference, ranked
from sslbench.leaderboard.compare import compare_records, difference, render_md, render_text
from sslbench.leaderboard.formatting import eval_sets_text, flops, se_text
from sslbench.leaderboard.html import render_html
from sslbench.leaderboard.markdown import render_markdown
from sslbench.leaderboard.plots import flops_plot, plots_section
from sslbench.leaderboard.record import schema_problems, write_record
from sslbench.leaderboard.render import CSV_COLUMNS, render_csv, render_json
from sslbench.leaderboard.wandb_table import LEADERBOARD_COLUMNS, leaderboard_rows

SETS = {"test": {"images": 900, "groups": 450}, "ood": {"images": 300, "groups": 150}}
SETS_TEXT = "test 900 images / 450 groups, ood 300 images / 150 groups"


def pretrain(total: float, per_image: float, wall: float = 50.0) -> dict[str, Any]:
    return {"steps": 10, "images_seen": int(total / per_image), "wall_time_s": wall,
            "img_per_s": 100.0, "final_loss": 1.0, "flops_per_image": per_image,
            "total_flops": total}


def runs(method: str, accs: list[float], **fields: Any) -> list[dict[str, Any]]:
    """One record per seed (eval seed 0) with test-set standard errors and set sizes."""
    fields.setdefault("eval_sets", SETS)
    return [make_record(method=method, seed=s,
                        metrics={"acc": a, "ood_acc": a - 0.1, "acc_se": 0.01 * (s + 1),
                                 "ood_acc_se": 0.02}, **fields)
            for s, a in enumerate(accs)]


def board() -> list[dict[str, Any]]:
    """random init, simclr (1.234e14 FLOPs per run, 4.56e9 per image) and a legacy byol row."""
    return aggregate(runs("random_init", [0.30, 0.35, 0.32], pretrain=None)
                     + runs("simclr", [0.50, 0.58, 0.49], pretrain=pretrain(1.234e14, 4.56e9))
                     + runs("byol", [0.52, 0.57, 0.55], pretrain={"wall_time_s": 80.0},
                            eval_sets=None))


def by_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for r in rows}


def md_row(md: str, method: str) -> list[str]:
    """The cells of ``method``'s line in the first table."""
    return next(split_row(line) for line in md.splitlines() if line.startswith(f"| {method} |"))


# ----------------------------------------------------------------------------- aggregation


def test_flops_are_averaged_over_the_records_that_have_them() -> None:
    recs = [make_record(seed=s, pretrain=pretrain(total, per_image))
            for s, (total, per_image) in enumerate([(1e14, 1e9), (2e14, 2e9), (6e14, 3e9)])]
    recs.append(make_record(seed=3))  # legacy: wall time only
    (row,) = aggregate(recs)
    assert row["pretrain_total_flops"] == pytest.approx(3e14, rel=1e-12)
    assert row["pretrain_flops_per_image"] == pytest.approx(2e9, rel=1e-12)
    assert row["pretrain_wall_time_s"] == 50.0


@pytest.mark.parametrize("pretrain_field", [None, {"wall_time_s": 5.0},
                                            {"total_flops": "many", "flops_per_image": True},
                                            {"total_flops": float("inf"),
                                             "flops_per_image": float("nan")}])
def test_unknown_flops_are_none(pretrain_field: Any) -> None:
    (row,) = aggregate([make_record(pretrain=pretrain_field)])
    assert row["pretrain_total_flops"] is None and row["pretrain_flops_per_image"] is None


def test_standard_errors_are_not_metrics_of_the_row() -> None:
    rows = by_method(board())
    simclr = rows["simclr"]
    assert sorted(simclr["metrics"]) == ["acc", "ood_acc"]
    assert simclr["mean_se"] == pytest.approx({"acc": 0.02, "ood_acc": 0.02}, rel=1e-12)
    for field in ("per_seed", "vs_random", "mdd", "best", "vs_best"):
        assert sorted(simclr[field]) == ["acc", "ood_acc"], field
    assert simclr["eval_sets"] == [SETS]
    assert rows["byol"]["eval_sets"] == [] and rows["byol"]["mean_se"]["acc"] == 0.02


def test_eval_sets_of_a_row_list_each_variant_once() -> None:
    other = {"test": {"images": 800, "groups": 400}}
    (row,) = aggregate([make_record(seed=0, eval_sets=SETS), make_record(seed=1, eval_sets=other),
                        make_record(seed=2, eval_sets=SETS), make_record(seed=3)])
    assert row["eval_sets"] == [SETS, other]  # canonical JSON order: '{"ood"' < '{"test"'


def strip_se(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "metrics": {k: v for k, v in r["metrics"].items() if not k.endswith("_se")}}
            for r in records]


def test_standard_errors_do_not_change_ranking_pairing_or_ties() -> None:
    # the lowest accuracy has by far the largest standard error: ranked on, it would lead
    recs = (runs("random_init", [0.30, 0.35, 0.32], pretrain=None)
            + runs("simclr", [0.50, 0.58, 0.49]) + runs("byol", [0.52, 0.57, 0.55]))
    for rec in recs:
        if rec["method"] == "random_init":
            rec["metrics"]["acc_se"] = 0.99
    with_se, without = aggregate(recs), aggregate(strip_se(recs))
    drop = ("mean_se",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in with_se] == \
        [{k: v for k, v in r.items() if k not in drop} for r in without]
    assert [r["method"] for r in ranked(with_se)] == ["byol", "simclr", "random_init"]
    assert mark_ties(with_se) == mark_ties(without)
    md = render_markdown(with_se)
    tables = md.split("- `linear` settings")[0]
    assert tables == render_markdown(without).split("- `linear` settings")[0]
    assert not [line for line in tables.splitlines() if line.startswith("|") and "se" in line]
    assert "acc_se" not in md


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("value, text", [
    (1.234e14, "123 TFLOP"), (4.56e9, "4.56 GFLOP"), (2e9, "2 GFLOP"), (1.5e15, "1.5 PFLOP"),
    (999.96e12, "1 PFLOP"), (999.4e12, "999 TFLOP"), (12345.0, "12.3 kFLOP"),
    (500.0, "500 FLOP"), (3e21, "3 ZFLOP"), (None, "–"),
])
def test_flops_text(value: float | None, text: str) -> None:
    assert flops(value) == text


def test_eval_sets_and_se_text() -> None:
    assert eval_sets_text({"ood": SETS["ood"], "test": SETS["test"]}) == SETS_TEXT
    assert eval_sets_text({"test": {"images": 5}}) == "test 5 images / ? groups"
    assert se_text({"ood_acc": 0.02, "acc": 0.0125}) == "acc 1.2 pts, ood_acc 2.0 pts"


# ----------------------------------------------------------------------------- markdown


def test_markdown_shows_flops_next_to_the_wall_time() -> None:
    md = render_markdown(board())
    header = split_row(next(line for line in md.splitlines() if line.startswith("| Method")))
    assert header[-3:] == ["Pretrain (s)", "Pretrain FLOP", "FLOP / image"]
    assert md_row(md, "simclr") == ["simclr", "resnet18", "quickstart", "52.3 ± 12.3 ≈",
                                    "42.3 ± 12.3 ≈", "3", "50.0", "123 TFLOP", "4.56 GFLOP"]
    assert md_row(md, "byol")[-3:] == ["80.0", "–", "–"]  # legacy: wall time, no FLOPs
    assert md_row(md, "random_init")[-3:] == ["–", "–", "–"]  # baseline: no pretraining
    assert "Pretrain FLOP is the mean over runs of the model FLOPs of pretraining" in md
    check_markdown(md)


def test_markdown_footer_gives_the_evaluation_sets() -> None:
    md = render_markdown(board())
    assert f"- Evaluation sets: {SETS_TEXT} (not recorded for 1 row)" in md
    agreed = render_markdown(aggregate(runs("simclr", [0.5, 0.6])))
    assert f"- Evaluation sets: {SETS_TEXT}\n" in agreed
    assert "Evaluation sets" not in render_markdown(aggregate([make_record()]))


def test_markdown_footer_lists_differing_evaluation_sets() -> None:
    small = {"test": {"images": 800, "groups": 400}}
    md = render_markdown(aggregate(runs("simclr", [0.5, 0.6])
                                   + runs("byol", [0.5, 0.6], eval_sets=small)))
    assert (f"- Evaluation sets differ between rows: {SETS_TEXT} for simclr · resnet18 · "
            "quickstart; test 800 images / 400 groups for byol · resnet18 · quickstart") in md


# ----------------------------------------------------------------------------- html


def test_html_shows_flops_columns_data_and_details() -> None:
    text = render_html(board())
    page = Page(text)
    names = column(page, "measured", "Method")
    cells = dict(zip(names, column(page, "measured", "Pretrain FLOP")))
    per_image = dict(zip(names, column(page, "measured", "FLOP / image")))
    assert cells == {"simclr": "123 TFLOP", "byol": "–", "random_init baseline": "–"}
    assert per_image["simclr"] == "4.56 GFLOP" and per_image["byol"] == "–"
    sortable = {a["data-label"]: (a["data-key"], a["data-type"]) for t, a in page.tags
                if t == "th" and a.get("data-key")}
    assert sortable["Pretrain FLOP"] == ("flops", "num")
    assert sortable["FLOP / image"] == ("flops_img", "num")
    (block,) = [b for a, b in page.scripts if a.get("type") == "application/json"]
    data = {r["method"]: r for r in json.loads(block)["rows"]}
    assert data["simclr"]["flops"] == pytest.approx(1.234e14)
    assert data["simclr"]["flops_img"] == pytest.approx(4.56e9)
    assert data["byol"]["flops"] is None
    assert not [h for h in headers(page, "measured") if "SE" in h or "_se" in h]
    assert not [k for r in data.values() for k in r if k.endswith("_se")]
    i = page.row_ids["measured"][names.index("simclr")]
    simclr = re.search(rf'<tr class="prov-row" id="prov-{i}" .*?</tr>', text, re.S).group(0)
    assert "123 TFLOP per run, 4.56 GFLOP per image (mean)" in simclr
    assert "acc 2.0 pts, ood_acc 2.0 pts (mean bootstrap standard error" in simclr
    assert SETS_TEXT in simclr
    check_html(text)


def test_plots_put_flops_beside_the_wall_time() -> None:
    plots = plots_section(board())
    grid = re.search(r'<div class="plots">(<figure>(?:(?!</figure>).)*pretraining cost: wall '
                     r'time.*?</figure><figure>.*?pretraining cost: FLOPs.*?</figure>)</div>',
                     plots, re.S)
    assert grid is not None  # the two cost plots, side by side in a grid of their own
    assert "FLOPs are comparable across machines, wall time is not." in plots
    assert "mean total pretraining FLOPs per run (log scale)" in plots
    assert "No accuracy-vs-FLOPs plot" not in plots
    legacy = plots_section(aggregate([make_record(), make_record(method="byol")]))
    assert "No accuracy-vs-FLOPs plot" in legacy and "pretraining cost: FLOPs" not in legacy


def test_flops_plot_ticks_and_labels_do_not_overlap() -> None:
    recs = [make_record(method=f"method_{i}", seed=s, metrics={"acc": 0.6 + 0.001 * s},
                        pretrain=pretrain(1e14 * (1 + 0.01 * i), 1e9))
            for i in range(6) for s in range(2)]
    svg = flops_plot(aggregate(recs), {"resnet18": "#000"}, "test")
    ticks = re.findall(r'font-size="10" fill="#59636e" font-weight="normal" dy="0.35em">'
                       r'([^<]*FLOP)</text>', svg)
    assert ticks == ["50 TFLOP", "100 TFLOP", "200 TFLOP"]
    labels = [(float(x), float(y), name) for x, y, name in re.findall(
        r'<text x="([\d.]+)" y="([\d.]+)"[^>]*><title>[^<]*</title>([^<]*)</text>', svg)]
    assert sorted(n for *_, n in labels) == [f"method_{i}" for i in range(6)]
    ys = sorted(y for _, y, _ in labels)
    assert all(b - a >= 12 for a, b in zip(ys, ys[1:]))  # one above the other, none on top


# ----------------------------------------------------------------------------- json, csv, wandb


def test_json_has_the_new_row_fields() -> None:
    simclr = by_method(json.loads(render_json(board())))["simclr"]
    assert simclr["pretrain_total_flops"] == pytest.approx(1.234e14)
    assert simclr["pretrain_flops_per_image"] == pytest.approx(4.56e9)
    assert simclr["mean_se"] == pytest.approx({"acc": 0.02, "ood_acc": 0.02})
    assert simclr["eval_sets"] == [SETS]
    assert "acc_se" not in simclr["metrics"]


def test_csv_has_paired_flops_and_se_columns() -> None:
    text = render_csv(board())
    header, *body = list(csv.reader(io.StringIO(text)))
    assert tuple(header) == CSV_COLUMNS
    assert header[12:] == ["se", "vs_random_mean", "vs_random_ci95", "vs_random_verdict", "mdd",
                           "pretrain_wall_time_s", "pretrain_total_flops",
                           "pretrain_flops_per_image"]
    lines = {(r["method"], r["metric"]): r for r in csv.DictReader(io.StringIO(text))}
    assert {m for _, m in lines} == {"acc", "ood_acc"}
    simclr = lines[("simclr", "acc")]
    assert float(simclr["vs_random_mean"]) == pytest.approx(0.2, abs=1e-9)  # [.20, .23, .17]
    assert float(simclr["vs_random_ci95"]) == pytest.approx(0.0745241, abs=1e-6)
    assert simclr["vs_random_verdict"] == "beats"
    assert float(simclr["mdd"]) == pytest.approx((4.302653 + 1.060660) * 0.03 / 3 ** 0.5,
                                                 abs=1e-5)
    assert float(simclr["se"]) == pytest.approx(0.02)
    assert (simclr["pretrain_total_flops"], simclr["pretrain_flops_per_image"]) == \
        ("123400000000000.0", "4560000000.0")
    byol = lines[("byol", "acc")]
    assert (byol["pretrain_wall_time_s"], byol["pretrain_total_flops"]) == ("80.0", "")
    random = lines[("random_init", "acc")]
    assert random["vs_random_mean"] == random["vs_random_verdict"] == random["mdd"] == ""


def test_wandb_table_has_the_flops_columns(tmp_path: Path) -> None:
    for i, rec in enumerate(runs("random_init", [0.30, 0.35, 0.32], pretrain=None)
                            + runs("simclr", [0.5, 0.6, 0.55],
                                   pretrain=pretrain(1.234e14, 4.56e9))):
        write_record(tmp_path / "results" / f"b{i}", rec)
    table = {r[LEADERBOARD_COLUMNS.index("method")]: dict(zip(LEADERBOARD_COLUMNS, r))
             for r in leaderboard_rows(tmp_path)}
    assert table["simclr"]["pretrain_total_flops"] == pytest.approx(1.234e14)
    assert table["simclr"]["pretrain_flops_per_image"] == pytest.approx(4.56e9)
    assert table["simclr"]["acc_se"] == 2.0
    assert table["random_init"]["pretrain_total_flops"] is None


# ----------------------------------------------------------------------------- compare


def accs(values: list[float], seeds: list[int] | None = None, **fields: Any) -> list[dict]:
    seeds = list(range(len(values))) if seeds is None else seeds
    return [make_record(seed=s, metrics={"acc": v}, **fields) for s, v in zip(seeds, values)]


# written by ``leaderboard compare`` before it used the aggregation's paired interval
COMPARE_TEXT = """\
A = A (12 records), B = B (13 records); metric acc in %, mean ± 95% t-interval over seeds (n = seeds)

Dataset   Recipe      Method  Backbone  Protocol  Settings  A                  B                  B − A [95% CI]       Test           Verdict  Config
embedded  quickstart  byol    resnet18  linear              61.5 ± 6.4 (n=2)   64.3 ± 12.7 (n=3)  +2.8 [-9.5, +15.1]   welch          agree    same
embedded  quickstart  dino    resnet18  linear              25.0 ± 63.5 (n=2)  25.5 ± 6.4 (n=2)   +0.5 [-56.7, +57.7]  paired         agree    same
embedded  quickstart  mae     resnet18  linear              50.0 (n=1)         90.0 (n=1)         +40.0                too few seeds  n/a      same
embedded  quickstart  simclr  resnet18  knn                 39.0 ± 10.1 (n=4)  40.2 ± 9.1 (n=4)   +1.3 [-1.5, +4.0]    paired         agree    same
embedded  quickstart  simclr  resnet18  linear              60.0 ± 24.8 (n=3)  61.7 ± 29.6 (n=3)  +1.7 [-7.1, +10.4]   paired         agree    same

5 rows compared: 4 agree, 0 differ, 1 undecided; 0 only in A, 0 only in B
"""  # noqa: E501
COMPARE_MD_ROWS = [
    "| embedded | quickstart | byol | resnet18 | linear |   | 61.5 ± 6.4 (n=2) | "
    "64.3 ± 12.7 (n=3) | +2.8 [-9.5, +15.1] | welch | agree | same |",
    "| embedded | quickstart | dino | resnet18 | linear |   | 25.0 ± 63.5 (n=2) | "
    "25.5 ± 6.4 (n=2) | +0.5 [-56.7, +57.7] | paired | agree | same |",
    "| embedded | quickstart | mae | resnet18 | linear |   | 50.0 (n=1) | 90.0 (n=1) | +40.0 | "
    "too few seeds | n/a | same |",
    "| embedded | quickstart | simclr | resnet18 | knn |   | 39.0 ± 10.1 (n=4) | "
    "40.2 ± 9.1 (n=4) | +1.3 [-1.5, +4.0] | paired | agree | same |",
    "| embedded | quickstart | simclr | resnet18 | linear |   | 60.0 ± 24.8 (n=3) | "
    "61.7 ± 29.6 (n=3) | +1.7 [-7.1, +10.4] | paired | agree | same |",
]

COMPARE_DIFFS = {
    ("byol", "linear"): {"df": 2.112119818432683, "hi": 0.15125320444886248,
                         "lo": -0.09458653778219582, "mean": 0.02833333333333332,
                         "test": "welch"},
    ("dino", "linear"): {"df": 1, "hi": 0.5767792131278611, "lo": -0.5667792131278611,
                         "mean": 0.0050000000000000044, "test": "paired"},
    ("mae", "linear"): {"df": None, "hi": None, "lo": None, "mean": 0.4, "test": "paired"},
    ("simclr", "knn"): {"df": 3, "hi": 0.03967530883796014, "lo": -0.014675308837960116,
                        "mean": 0.012500000000000011, "test": "paired"},
    ("simclr", "linear"): {"df": 2, "hi": 0.10390671601801806, "lo": -0.07057338268468462,
                           "mean": 0.01666666666666672, "test": "paired"},
}


def compare_sides() -> tuple[list[dict], list[dict]]:
    a = (accs([0.50, 0.60, 0.70]) + accs([0.3, 0.4, 0.45, 0.41], protocol="knn")
         + accs([0.61, 0.62], method="byol") + accs([0.5], method="mae")
         + accs([0.2, 0.3], method="dino"))
    b = (accs([0.52, 0.58, 0.75]) + accs([0.33, 0.41, 0.47, 0.40], protocol="knn")
         + accs([0.63, 0.60, 0.7], method="byol", seeds=[5, 6, 7]) + accs([0.9], method="mae")
         + accs([0.25, 0.26], method="dino"))
    return a, b


def test_compare_output_is_unchanged() -> None:
    a, b = compare_sides()
    result = {**compare_records(a, b), "n_a": len(a), "n_b": len(b)}
    assert render_text(result, "A", "B") == COMPARE_TEXT
    md = render_md(result, "A", "B").splitlines()
    assert md[4:9] == COMPARE_MD_ROWS
    for row in result["rows"]:  # JSON: the same numbers (to the last bit or so)
        expected = COMPARE_DIFFS[(row["method"], row["protocol"])]
        for key, value in expected.items():
            assert row["diff"][key] == (value if value is None or isinstance(value, str)
                                        else pytest.approx(value, rel=1e-12)), key


def test_compare_uses_the_aggregation_paired_interval() -> None:
    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.52, 1: 0.58, 2: 0.75}
    diff = difference(a, b)
    pairs = paired_difference([[s, None, v] for s, v in b.items()],
                              [[s, None, v] for s, v in a.items()])
    assert diff["hi"] - diff["mean"] == pytest.approx(pairs["ci95"], rel=1e-12)
    assert diff["mean"] == pytest.approx(pairs["mean"], rel=1e-12)
    assert difference({0: 0.5}, {0: 0.6})["lo"] is None


# ----------------------------------------------------------------------------- escaping


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_eval_sets_and_se_names_are_escaped(evil: str) -> None:
    sets = {evil: {"images": evil, "groups": 3}, "test": {"images": 10, "groups": 5}}
    recs = [make_record(seed=s, eval_sets=sets, pretrain={"total_flops": evil, "wall_time_s": 1},
                        metrics={"acc": 0.5 + 0.1 * s, f"{evil}_se": 0.1, "acc_se": 0.01})
            for s in range(2)]
    assert any("eval_sets" in p for p in schema_problems(recs[0]))  # the loader refuses it
    rows = aggregate(recs)
    assert rows[0]["pretrain_total_flops"] is None
    md = render_markdown(rows)
    check_markdown(md)
    assert "Evaluation sets: test 10 images / 5 groups" in md
    page = render_html(rows)
    check_html(page)
