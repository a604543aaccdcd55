"""Leaderboard loading, aggregation over seeds and rendering (markdown, JSON, CSV)."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from sslbench.errors import UserError
from sslbench.leaderboard.aggregation import aggregate
from sslbench.leaderboard.markdown import render_markdown
from sslbench.leaderboard.record import write_record
from sslbench.leaderboard.render import render, render_csv, render_json, write_board
from sslbench.leaderboard.store import load_records


def make_record(**overrides: Any) -> dict[str, Any]:
    """A valid record with every required field; ``overrides`` replace top-level fields."""
    rec: dict[str, Any] = {
        "schema_version": 1,
        "kind": "measured",
        "method": "simclr",
        "backbone": "resnet18",
        "backbone_family": "resnet",
        "dataset": "embedded",
        "protocol": "linear",
        "protocol_settings": {"solver": "lbfgs", "C": 0.1, "c_grid": [0.01, 0.1, 1.0]},
        "seed": 0,
        "eval_seed": 0,
        "metrics": {"acc": 0.6},
        "recipe": {"path": "recipes/quickstart.yaml", "sha256": "abcdef012345",
                   "name": "quickstart"},
        "run_id": "run-0",
        "config": {},
        "provenance": {"sslbench_version": "0.1.0", "git_commit": "0123456789abcdef",
                       "git_dirty": False, "torch": "2.4", "timm": "1.0", "python": "3.11",
                       "device": "cpu"},
        "pretrain": {"steps": 10, "images_seen": 100, "wall_time_s": 50.0},
        "wall_time_s": 1.0,
        "created": "2026-01-01T00:00:00+00:00",
    }
    rec.update(overrides)
    return rec


def write_all(results: Path, *records: dict[str, Any]) -> Path:
    for rec in records:
        write_record(results, rec)
    return results


def table_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]


def row_for(md: str, method_cell: str) -> str:
    matches = [line for line in table_lines(md) if line.startswith(f"| {method_cell} |")]
    assert len(matches) == 1, matches
    return matches[0]


def split_cells(line: str) -> list[str]:
    """Split a markdown table row on unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


# ----------------------------------------------------------------------------- statistics


def test_ci_matches_scipy_t_interval(tmp_path: Path) -> None:
    vals = [0.60, 0.62, 0.64]
    recs = [make_record(seed=i, metrics={"acc": v}) for i, v in enumerate(vals)]
    (row,) = aggregate(load_records(write_all(tmp_path / "results", *recs)))
    acc = row["metrics"]["acc"]
    lo, hi = stats.t.interval(0.95, df=2, loc=np.mean(vals), scale=stats.sem(vals))
    assert acc["n"] == 3
    assert acc["mean"] == pytest.approx(0.62)
    assert acc["std"] == pytest.approx(np.std(vals, ddof=1)) == pytest.approx(0.02)
    assert acc["ci95"] == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert acc["ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert row["seeds"] == [[0, 0], [1, 0], [2, 0]]
    md = render_markdown([row])
    assert "| 62.0 ± 5.0 |" in row_for(md, "simclr")


def test_single_seed_has_no_ci_and_markdown_shows_mean_only(tmp_path: Path) -> None:
    results = write_all(tmp_path / "results", make_record(metrics={"acc": 0.6134}))
    (row,) = aggregate(load_records(results))
    assert row["metrics"]["acc"] == {"n": 1, "mean": 0.6134, "std": 0.0, "ci95": None}
    line = row_for(render(results, "md"), "simclr")
    assert split_cells(line)[3] == "61.3"
    assert "±" not in line


# ----------------------------------------------------------------------------- grouping


def test_groups_split_by_recipe_and_settings_but_not_by_chosen_c(tmp_path: Path) -> None:
    other_recipe = {"path": "recipes/long.yaml", "sha256": "ffffffffffff", "name": "long"}
    recs = [
        make_record(seed=0, protocol_settings={"solver": "lbfgs", "C": 0.1, "chosen_C": 0.1}),
        # a grid-edge note is per run, like the chosen C: it must not split the group
        make_record(seed=1, protocol_settings={"solver": "lbfgs", "C": 1.0, "chosen_C": 1.0,
                                               "grid_edge": "C 1 is the largest of c_grid"}),
        make_record(seed=0, recipe=other_recipe),
        make_record(seed=0, protocol_settings={"solver": "saga", "C": 0.1}),
        make_record(seed=0, protocol="knn", protocol_settings={"k": 20, "temperature": 0.07}),
        make_record(seed=1, protocol="knn", protocol_settings={"k": 200, "temperature": 0.07}),
    ]
    # Distinct file names for records that would otherwise share a path.
    results = tmp_path / "results"
    for i, rec in enumerate(recs):
        rec["run_id"] = f"run-{i}"
        write_record(results / f"batch{i}", rec)
    rows = aggregate(load_records(results))
    keys = sorted((r["protocol"], r["recipe"], json.dumps(r["protocol_settings"], sort_keys=True),
                   r["n"]) for r in rows)
    assert keys == [
        # settings written before label fractions existed count as every label (1.0)
        ("knn", "quickstart", '{"k": 20, "label_fraction": 1.0, "temperature": 0.07}', 1),
        ("knn", "quickstart", '{"k": 200, "label_fraction": 1.0, "temperature": 0.07}', 1),
        ("linear", "long", '{"c_grid": [0.01, 0.1, 1.0], "label_fraction": 1.0, "solver": "lbfgs"}',
         1),
        ("linear", "quickstart", '{"label_fraction": 1.0, "solver": "lbfgs"}', 2),
        ("linear", "quickstart", '{"label_fraction": 1.0, "solver": "saga"}', 1),
    ]
    merged = next(r for r in rows if r["n"] == 2)
    assert merged["chosen_settings"] == {"C": [0.1, 1.0], "chosen_C": [0.1, 1.0],
                                         "grid_edge": ["C 1 is the largest of c_grid"]}


def test_duplicate_seed_pair_keeps_newest(tmp_path: Path) -> None:
    old = make_record(metrics={"acc": 0.10}, created="2026-01-01T00:00:00+00:00")
    new = make_record(metrics={"acc": 0.90}, created="2026-03-01T00:00:00+00:00")
    other_eval = make_record(eval_seed=1, metrics={"acc": 0.50})
    results = tmp_path / "results"
    # Newest first in path order, so "last one wins" would pick the wrong record.
    write_record(results / "a", new)
    write_record(results / "b", old)
    write_record(results / "b", other_eval)
    (row,) = aggregate(load_records(results))
    assert row["n"] == 2
    assert row["seeds"] == [[0, 0], [0, 1]]
    assert row["metrics"]["acc"]["mean"] == pytest.approx((0.90 + 0.50) / 2)
    assert row["created"] == "2026-03-01T00:00:00+00:00"


def test_row_carries_provenance(tmp_path: Path) -> None:
    recs = [
        make_record(seed=0, pretrain={"wall_time_s": 40.0}),
        make_record(seed=1, pretrain={"wall_time_s": 60.0},
                    provenance={"git_commit": "fedcba9876543210", "git_dirty": True,
                                "device": "NVIDIA H100"}),
        make_record(seed=2, pretrain=None),
    ]
    (row,) = aggregate(load_records(write_all(tmp_path / "results", *recs)))
    assert row["pretrain_wall_time_s"] == pytest.approx(50.0)
    assert row["git_commits"] == ["0123456789abcdef", "fedcba9876543210"]
    assert row["git_dirty"] is True
    assert row["devices"] == ["NVIDIA H100", "cpu"]
    assert row["recipe_path"] == "recipes/quickstart.yaml"
    assert row["recipe_sha256"] == ["abcdef012345"]
    assert row["backbone_family"] == "resnet"


# ----------------------------------------------------------------------------- markdown


def test_markdown_baselines_first_then_methods_by_linear_acc(tmp_path: Path) -> None:
    spec = [("raw_pixels", 0.30, "pixels"), ("timm:resnet18", 0.95, "resnet18"),
            ("simclr", 0.55, "resnet18"), ("byol", 0.70, "resnet18"),
            ("dino", 0.62, "resnet18"), ("random_init", 0.20, "resnet18")]
    recs = []
    for method, acc, backbone in spec:
        recs.append(make_record(method=method, backbone=backbone, metrics={"acc": acc}))
        recs.append(make_record(method=method, backbone=backbone, protocol="knn",
                                protocol_settings={"k": 20, "temperature": 0.07},
                                metrics={"acc": acc - 0.05, "ood_acc": acc - 0.1}))
    md = render(write_all(tmp_path / "results", *recs), "md")
    lines = table_lines(md.split("**Paired differences**")[0])  # the main table
    assert split_cells(lines[0]) == ["Method", "Backbone", "Recipe", "linear top-1 (%)",
                                     "knn top-1 (%)", "knn OOD (%)", "Seeds", "Pretrain (s)",
                                     "Pretrain FLOP", "FLOP / image"]
    methods = [split_cells(line)[0] for line in lines[1:]]
    assert methods[:3] == ["timm:resnet18", "raw_pixels", "random_init"]
    assert methods[3:] == ["byol", "dino", "simclr"]
    assert split_cells(row_for(md, "byol"))[3:] == ["70.0", "65.0", "60.0", "1", "50.0", "–",
                                                      "–"]
    assert md.startswith("# sslbench leaderboard\n")
    # true of any board directory, not only the committed one
    assert ("Generated by `sslbench leaderboard` from the result records in `results/` beside "
            "this file — do not edit by hand." in md)
    assert "95% t-interval over seeds" in md
    assert "## embedded" in md
    assert '`knn` settings: k = `20`, label_fraction = `1.0`, temperature = `0.07`' in md
    assert ('`linear` settings: c_grid = `[0.01, 0.1, 1.0]`, label_fraction = `1.0`, '
            'solver = `"lbfgs"`') in md
    assert "Commits: `0123456789ab`" in md


def test_markdown_missing_protocol_and_other_settings_table(tmp_path: Path) -> None:
    recs = [
        make_record(method="simclr", metrics={"acc": 0.5}),
        make_record(method="byol", metrics={"acc": 0.6}),
        make_record(method="byol", protocol="knn", protocol_settings={"k": 20},
                    metrics={"acc": 0.4}),
        make_record(method="simclr", protocol="knn", protocol_settings={"k": 20},
                    metrics={"acc": 0.3}),
        make_record(method="simclr", protocol="knn", protocol_settings={"k": 200},
                    metrics={"acc": 0.35}),
        make_record(method="dino", protocol="knn", protocol_settings={"k": 20},
                    metrics={"acc": 0.45}),
    ]
    md = render(write_all(tmp_path / "results", *recs), "md")
    assert split_cells(row_for(md, "dino"))[3:5] == ["–", "**45.0**"]  # best k-NN (k 20)
    assert "### knn, other settings" in md
    other = md.split("### knn, other settings")[1]
    assert split_cells(table_lines(other)[1])[:4] == ["simclr", "resnet18", "quickstart", "35.0"]
    assert "k = `200`" in other


def test_markdown_marks_the_best_and_ties_per_column(tmp_path: Path) -> None:
    accs = {"simclr": [0.60, 0.62, 0.64], "byol": [0.55, 0.61, 0.66],  # overlaps simclr's CI
            "rotation": [0.40, 0.41, 0.42]}  # clearly below
    recs = [make_record(method=m, seed=i, metrics={"acc": a, "ood_acc": 0.5 - 0.1 * i})
            for m, vals in accs.items() for i, a in enumerate(vals)]
    md = render(write_all(tmp_path / "results", *recs), "md")
    simclr, byol, rot = (split_cells(row_for(md, m))[3] for m in ("simclr", "byol", "rotation"))
    assert simclr.startswith("**62.0 ±") and simclr.endswith("**")
    assert byol.startswith("60.7 ±") and byol.endswith(" ≈")
    assert rot.startswith("41.0 ±") and "≈" not in rot and "**" not in rot
    # OOD: every method has the same values, so all tie with the best (the first listed)
    oods = [split_cells(row_for(md, m))[4] for m in ("simclr", "byol", "rotation")]
    assert sum(o.startswith("**") for o in oods) == 1 and sum(o.endswith("≈") for o in oods) == 2


def test_markdown_escapes_pipes() -> None:
    # such names are refused by the writer and the loader; the renderer escapes them anyway
    md = render_markdown(aggregate([make_record(method="evil|method", backbone="a|b",
                                                metrics={"acc": 0.5})]))
    line = row_for(md, r"evil\|method")
    header = table_lines(md)[0]
    assert len(split_cells(line)) == len(split_cells(header)) == 8
    assert split_cells(line)[:2] == [r"evil\|method", r"a\|b"]


def test_markdown_empty_results(tmp_path: Path) -> None:
    md = render(tmp_path / "does-not-exist", "md")
    assert md.startswith("# sslbench leaderboard")
    assert "No results yet." in md
    assert table_lines(md) == []


# ----------------------------------------------------------------------------- json / csv


def test_csv_round_trips_awkward_method_name() -> None:
    name = 'my "best", method'  # refused by the loader; CSV quoting still holds
    recs = [make_record(method=name, seed=s, metrics={"acc": a, "ood_acc": a - 0.1})
            for s, a in [(0, 0.6), (1, 0.7)]]
    text = render_csv(aggregate(recs))
    header, *body = list(csv.reader(io.StringIO(text)))
    assert header[:11] == ["dataset", "protocol", "method", "backbone", "recipe", "metric", "n",
                           "mean", "std", "ci95", "seeds"]
    assert [r[header.index("metric")] for r in body] == ["acc", "ood_acc"]
    acc = dict(zip(header, body[0]))
    assert acc["method"] == name
    assert acc["n"] == "2"
    assert float(acc["mean"]) == pytest.approx(0.65)
    assert float(acc["ci95"]) == pytest.approx(
        stats.t.ppf(0.975, 1) * np.std([0.6, 0.7], ddof=1) / math.sqrt(2))
    assert acc["seeds"] == "0/0;1/0"


def test_csv_single_seed_has_empty_ci() -> None:
    rows = aggregate([make_record()])
    (line,) = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert line["ci95"] == ""
    assert line["std"] == "0.0"


def test_json_round_trips() -> None:
    rows = aggregate([make_record(seed=0), make_record(seed=1, metrics={"acc": 0.7})])
    back = json.loads(render_json(rows))
    assert back == rows
    assert back[0]["metrics"]["acc"]["n"] == 2


def test_unknown_format_names_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'html'.*md, json, csv"):
        render(tmp_path, "html")


# ----------------------------------------------------------------------------- store


def test_invalid_json_raises_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "results" / "embedded" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(UserError, match="broken.json.*not valid JSON") as err:
        load_records(tmp_path / "results")
    assert "\n" not in str(err.value)


def test_invalid_record_raises_user_error_and_renderers_skip_it(tmp_path: Path,
                                                                 capsys) -> None:
    results = write_all(tmp_path / "results", make_record())
    rec = make_record(method="byol")
    del rec["metrics"]
    bad = results / "embedded" / "byol.json"
    bad.write_text(json.dumps(rec))
    with pytest.raises(UserError, match=r"byol\.json: missing field 'metrics'; fix or remove"):
        load_records(results)
    capsys.readouterr()
    for fmt in ("md", "json", "csv"):
        text = render(results, fmt)
        assert "simclr" in text and "byol" not in text
        assert capsys.readouterr().err.splitlines() == [
            f"sslbench: warning: skipped {bad}: missing field 'metrics'"]


def test_wrong_field_types_raise_user_error(tmp_path: Path) -> None:
    path = tmp_path / "results" / "x.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(make_record(recipe="quickstart", method=3)))
    with pytest.raises(UserError,
                       match=r"x\.json.*'method' must be a safe name.*'recipe' must be a mapping"):
        load_records(tmp_path / "results")


def test_load_skips_hidden_files_and_sorts(tmp_path: Path) -> None:
    results = write_all(tmp_path / "results", make_record(dataset="b"), make_record(dataset="a"))
    (results / "a" / ".partial.json").write_text("{half")
    recs = load_records(results)
    assert [r["dataset"] for r in recs] == ["a", "b"]
    assert load_records(tmp_path / "missing") == []


def test_write_board_writes_leaderboard_md(tmp_path: Path) -> None:
    board = tmp_path / "leaderboard"
    write_all(board / "results", make_record(seed=0), make_record(seed=1, metrics={"acc": 0.7}))
    path = write_board(board)
    assert path == board / "LEADERBOARD.md"
    text = path.read_text()
    assert text == render(board / "results", "md")
    assert "| simclr | resnet18 | quickstart | 65.0 ± 63.5 | 2 | 50.0 |" in text
    assert sorted(p.name for p in board.iterdir()) == ["LEADERBOARD.md", "results"]


def test_records_without_label_fraction_group_with_full_label_records(tmp_path: Path) -> None:
    """Records written before label fractions existed used every label: they aggregate with
    new records at label_fraction 1.0, never with a low-label regime."""
    old = make_record(seed=0, protocol_settings={"solver": "lbfgs"})
    new = make_record(seed=1, protocol_settings={"solver": "lbfgs", "label_fraction": 1.0})
    low = make_record(seed=2, protocol_settings={"solver": "lbfgs", "label_fraction": 0.1})
    results = tmp_path / "results"
    for i, rec in enumerate([old, new, low]):
        write_record(results / f"batch{i}", rec)
    rows = aggregate(load_records(results))
    assert sorted(r["n"] for r in rows) == [1, 2]
