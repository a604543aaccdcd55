"""``sslbench leaderboard compare A B``: per-row B − A intervals (paired or Welch), verdicts,
rows on one side only, and whether both sides ran the same config."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from conftest import make_record, make_record_v2

from sslbench.cli import main
from sslbench.leaderboard.compare import compare_records, render_md, summary_line
from sslbench.leaderboard.record import write_record

T_975_2 = 4.302653  # Student t, 0.975 quantile, 2 degrees of freedom


v2 = make_record_v2


def accs(values: list[float], make=make_record, seeds=None, **fields: Any) -> list[dict]:
    """One record per seed (0, 1, ... unless ``seeds``) with acc = value."""
    seeds = range(len(values)) if seeds is None else seeds
    return [make(seed=s, metrics={"acc": v}, **fields) for s, v in zip(seeds, values)]


def only_row(a: list[dict], b: list[dict]) -> dict[str, Any]:
    result = compare_records(a, b)
    assert len(result["rows"]) == 1, result["rows"]
    return result["rows"][0]


def board(root: Path, records: list[dict]) -> Path:
    for rec in records:
        write_record(root / "results", rec)
    return root


# ----------------------------------------------------------------------------- numbers


def test_paired_interval_exact():
    row = only_row(accs([0.50, 0.60, 0.70]), accs([0.52, 0.58, 0.75]))
    d = [0.02, -0.02, 0.05]
    mean = sum(d) / 3
    half = T_975_2 * math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    assert row["diff"]["test"] == "paired"
    assert row["diff"]["mean"] == pytest.approx(0.0166667, abs=1e-6)
    assert row["diff"]["lo"] == pytest.approx(mean - half, abs=1e-6)
    assert row["diff"]["hi"] == pytest.approx(mean + half, abs=1e-6)
    assert row["diff"]["lo"] == pytest.approx(-0.0705734, abs=1e-6)
    assert row["diff"]["hi"] == pytest.approx(0.1039067, abs=1e-6)
    assert row["a"]["n"] == 3 and row["a"]["mean"] == pytest.approx(0.6, abs=1e-12)
    assert row["a"]["ci95"] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), abs=1e-6)
    assert row["b"]["ci95"] == pytest.approx(0.2963664, abs=1e-6)
    assert row["verdict"] == "agree"


def test_paired_difference_differs():
    row = only_row(accs([0.50, 0.51, 0.52]), accs([0.60, 0.61, 0.63]))
    assert row["diff"]["test"] == "paired"
    assert row["diff"]["lo"] > 0
    assert row["verdict"] == "differ"


def test_eval_seeds_are_averaged_within_a_seed_before_pairing():
    a = [make_record(seed=s, eval_seed=e, metrics={"acc": v})
         for s, e, v in ((0, 0, 0.4), (0, 1, 0.6), (1, 0, 0.6), (2, 0, 0.7))]
    row = only_row(a, accs([0.52, 0.58, 0.75]))
    assert row["a"]["n"] == 3 and row["a"]["seeds"] == [0, 1, 2]
    assert row["a"]["mean"] == pytest.approx(0.6, abs=1e-12)
    assert row["diff"]["test"] == "paired"
    assert row["diff"]["mean"] == pytest.approx(0.0166667, abs=1e-6)


def test_welch_when_seeds_differ():
    a, b = [0.50, 0.60, 0.70], [0.52, 0.58, 0.75, 0.61]
    row = only_row(accs(a), accs(b, seeds=[3, 4, 5, 6]))
    expected = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert row["diff"]["test"] == "welch"
    assert row["diff"]["lo"] == pytest.approx(expected.low, abs=1e-9)
    assert row["diff"]["hi"] == pytest.approx(expected.high, abs=1e-9)
    assert row["verdict"] == "agree"


def test_identical_constant_sides_agree():
    row = only_row(accs([0.5, 0.5]), accs([0.5, 0.5], seeds=[5, 6]))
    assert (row["diff"]["lo"], row["diff"]["hi"]) == (0.0, 0.0)
    assert row["verdict"] == "agree"


@pytest.mark.parametrize("b_seeds", [[0], [1]])
def test_one_seed_is_undecided(b_seeds):
    row = only_row(accs([0.5]), accs([0.9], seeds=b_seeds))
    assert row["diff"]["lo"] is None and row["verdict"] == "n/a"


# ----------------------------------------------------------------------------- rows


def test_rows_only_on_one_side_and_summary():
    a = accs([0.5, 0.6]) + accs([0.3, 0.4], protocol="knn")
    b = accs([0.5, 0.6]) + accs([0.3, 0.4], method="byol") + accs([0.2], method="mae")
    result = compare_records(a, b)
    verdicts = {(r["method"], r["protocol"]): r["verdict"] for r in result["rows"]}
    assert verdicts == {("simclr", "linear"): "agree", ("simclr", "knn"): "only in A",
                        ("byol", "linear"): "only in B", ("mae", "linear"): "only in B"}
    assert summary_line(result["summary"]) == (
        "1 rows compared: 1 agree, 0 differ, 0 undecided; 1 only in A, 2 only in B")


def test_label_fraction_and_feature_layer_make_rows():
    lf = {"solver": "lbfgs", "label_fraction": 0.1}
    a = (accs([0.5, 0.6]) + accs([0.3, 0.4], protocol_settings=lf)
         + accs([0.2, 0.3], protocol_settings={"feature_layer": 2}))
    b = (accs([0.5, 0.6], protocol_settings={"label_fraction": 1.0})
         + accs([0.3, 0.4], protocol_settings=lf))
    rows = compare_records(a, b)["rows"]
    got = {(r["label_fraction"], r["feature_layer"]): r["verdict"] for r in rows}
    assert got == {(1.0, None): "agree", (0.1, None): "agree", (1.0, 2): "only in A"}


def test_reported_records_are_not_compared():
    paper = accs([0.9, 0.9], kind="reported", source="a paper")
    result = compare_records(accs([0.5, 0.6]) + paper, accs([0.5, 0.6]))
    assert [r["verdict"] for r in result["rows"]] == ["agree"]


def test_unknown_metric_is_one_line(tmp_path, capsys):
    a = board(tmp_path / "a", accs([0.5, 0.6]))
    assert main(["leaderboard", "compare", str(a), str(a), "--metric", "top5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sslbench: error: no record has the metric 'top5'; pass --metric with one "
                   "of acc"]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("a_make, b_make, expected", [
    (lambda **f: v2(**f), lambda **f: v2(**f), "same"),
    (lambda **f: v2(**f), lambda **f: v2(config={"optim": {"lr": 0.2}}, **f), "different"),
    (make_record, make_record, "same"),
    (make_record, lambda **f: make_record(recipe={"path": "recipes/quickstart.yaml",
                                                   "sha256": "999999999999",
                                                   "name": "quickstart"}, **f), "different"),
    (make_record, lambda **f: v2(**f), "unknown"),
])
def test_config_column(a_make, b_make, expected):
    row = only_row(accs([0.5, 0.6], make=a_make), accs([0.5, 0.6], make=b_make))
    assert row["config"] == expected


def test_legacy_record_with_the_same_stored_config_is_same():
    config = {"optim": {"lr": 0.1}, "train": {"seed": 0}}
    a = accs([0.5, 0.6], config=config)
    row = only_row(a, accs([0.5, 0.6], make=v2, config=config))
    assert row["config"] == "same"


# ----------------------------------------------------------------------------- CLI


def test_cli_text_report(tmp_path, capsys):
    a = board(tmp_path / "a", accs([0.50, 0.60, 0.70]) + accs([0.3, 0.4], protocol="knn"))
    b = board(tmp_path / "b", accs([0.52, 0.58, 0.75]) + accs([0.9], method="byol"))
    assert main(["leaderboard", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if " linear " in x and "simclr" in x)
    assert line.split() == ["embedded", "quickstart", "simclr", "resnet18", "linear",
                            "60.0", "±", "24.8", "(n=3)", "61.7", "±", "29.6", "(n=3)",
                            "+1.7", "[-7.1,", "+10.4]", "paired", "agree", "same"]
    assert "only in A" in out and "only in B" in out
    assert out.rstrip().splitlines()[-1] == (
        "1 rows compared: 1 agree, 0 differ, 0 undecided; 1 only in A, 1 only in B")


def test_cli_too_few_seeds_and_differ_exit_zero(tmp_path, capsys):
    a = board(tmp_path / "a", accs([0.5]) + accs([0.50, 0.51, 0.52], protocol="knn"))
    b = board(tmp_path / "b", accs([0.6]) + accs([0.60, 0.61, 0.63], protocol="knn"))
    assert main(["leaderboard", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    linear = next(x for x in out.splitlines() if " linear " in x)
    assert "too few seeds" in linear and linear.split()[-2] == "n/a"
    assert out.rstrip().splitlines()[-1] == (
        "2 rows compared: 0 agree, 1 differ, 1 undecided; 0 only in A, 0 only in B")


def test_cli_json_and_md(tmp_path, capsys):
    a = board(tmp_path / "a", accs([0.50, 0.60, 0.70]))
    b = board(tmp_path / "b", accs([0.52, 0.58, 0.75]))
    assert main(["leaderboard", "compare", str(a), str(b), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"] == {"compared": 1, "agree": 1, "differ": 0, "undecided": 0,
                               "only_in_a": 0, "only_in_b": 0}
    assert data["rows"][0]["diff"]["mean"] == pytest.approx(0.0166667, abs=1e-6)
    assert main(["leaderboard", "compare", str(a), str(b), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| embedded | quickstart | simclr | resnet18 | linear |" in md
    assert "| 60.0 ± 24.8 (n=3) | 61.7 ± 29.6 (n=3) | +1.7 [-7.1, +10.4] | paired | agree |" in md


def test_markdown_escapes_record_strings():
    records = accs([0.5, 0.6], method="x|y", backbone="<script>")
    result = {**compare_records(records, records), "n_a": 2, "n_b": 2}
    md = render_md(result, "a", "b")
    assert "| x\\|y | &lt;script&gt; | linear |" in md and "<script>" not in md


@pytest.mark.parametrize("argv, message", [
    (["compare", "a", "missing"], "leaderboard directory missing does not exist"),
    (["compare", "a"], "'sslbench leaderboard compare' takes A B, got 1 directory"),
    (["compare", "a", "a", "--format", "csv"], "unknown compare format 'csv'"),
    (["compare", "a", "a/results"], "a/results is a results directory; pass the leaderboard "
                                    "directory above it (a)"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    board(tmp_path / "a", accs([0.5, 0.6]))
    assert main(["leaderboard", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslbench: error: ") and message in err[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_cli_skips_a_bad_record_file_with_a_warning(tmp_path, capsys):
    a = board(tmp_path / "a", accs([0.50, 0.60, 0.70]))
    b = board(tmp_path / "b", accs([0.52, 0.58, 0.75]))
    bad = b / "results" / "embedded" / "broken.json"
    bad.write_text("{not json")
    assert main(["leaderboard", "compare", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"sslbench: warning: skipped {bad}: not valid JSON")
    assert captured.out.rstrip().splitlines()[-1].startswith("1 rows compared: 1 agree")
