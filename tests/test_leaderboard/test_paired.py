"""Paired statistics on the board: differences to the random-init row and to the best row of a
column, paired over shared (seed, eval seed) pairs, the minimal detectable difference (MDD) and
the seeds a claim needs, in the rows, the Markdown board, the HTML page, JSON and the W&B table.

Every expected number is worked out by hand below from literal Student-t quantiles:
t(0.975, 1) = 12.706205, t(0.80, 1) = 1.376382, t(0.975, 2) = 4.302653, t(0.80, 2) = 1.060660,
t(0.975, 3) = 3.182446, t(0.80, 3) = 0.978472, t(0.975, 4) = 2.776445, t(0.80, 4) = 0.940965.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record
from test_escaping import HOSTILE, check_html, check_markdown, split_row
from test_html import Page, column

from sslbench.leaderboard.aggregation import (
    aggregate, best_comparisons, mark_ties, mdd, paired_difference, seeds_for,
)
from sslbench.leaderboard.html import render_html
from sslbench.leaderboard.markdown import render_markdown
from sslbench.leaderboard.record import write_record
from sslbench.leaderboard.render import render_json
from sslbench.leaderboard.wandb_table import LEADERBOARD_COLUMNS, leaderboard_rows

T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}
T80 = {1: 1.376382, 2: 1.060660, 3: 0.978472, 4: 0.940965}
APPROX = 1e-6

# random init and two methods on seeds 0, 1, 2 (eval seed 0)
RANDOM = [0.30, 0.35, 0.32]
A = [0.50, 0.58, 0.49]  # A - random: [0.20, 0.23, 0.17]
B = [0.52, 0.57, 0.55]  # B - random: [0.22, 0.22, 0.23]; B is the best (mean 0.546667)


def runs(method: str, accs: list[float], seeds: list[int] | None = None,
         **fields: Any) -> list[dict[str, Any]]:
    """One record per seed (eval seed 0); ``ood_acc`` is top-1 minus 0.1."""
    return [make_record(method=method, seed=s, metrics={"acc": a, "ood_acc": a - 0.1}, **fields)
            for s, a in zip(seeds if seeds is not None else range(len(accs)), accs)]


def by_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for r in rows}


def board() -> list[dict[str, Any]]:
    return aggregate(runs("random_init", RANDOM) + runs("a", A) + runs("b", B))


# ----------------------------------------------------------------------------- formulas


def test_paired_difference_by_hand() -> None:
    a = [[0, 0, 0.50], [1, 0, 0.58], [2, 0, 0.49]]
    r = [[0, 0, 0.30], [1, 0, 0.35], [2, 0, 0.32]]
    diff = paired_difference(a, r)
    # differences [0.20, 0.23, 0.17]: mean 0.20, sd sqrt((0 + 0.03² + 0.03²) / 2) = 0.03
    half = T975[2] * 0.03 / math.sqrt(3)  # 0.0745241
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.20, abs=APPROX)
    assert diff["sd"] == pytest.approx(0.03, abs=APPROX)
    assert diff["ci95"] == pytest.approx(0.0745241, abs=APPROX) == pytest.approx(half, abs=APPROX)
    assert diff["lo"] == pytest.approx(0.1254759, abs=APPROX)
    assert diff["hi"] == pytest.approx(0.2745241, abs=APPROX)
    assert diff["verdict"] == "beats"


def test_mdd_and_seeds_for_by_hand() -> None:
    # (t(0.975, 2) + t(0.80, 2)) * 0.03 / sqrt(3) = 5.363313 * 0.0173205 = 0.0928953
    assert mdd(0.03, 3) == pytest.approx((T975[2] + T80[2]) * 0.03 / math.sqrt(3), abs=APPROX)
    assert mdd(0.03, 3) == pytest.approx(0.0928953, abs=APPROX)
    assert mdd(0.03, 1) is None  # no degrees of freedom
    # 5 points at sd 0.03: n = 4 gives (3.182446 + 0.978472) * 0.03 / 2 = 0.0624138 > 0.05,
    # n = 5 gives (2.776445 + 0.940965) * 0.03 / sqrt(5) = 0.0498743 <= 0.05
    assert (T975[3] + T80[3]) * 0.03 / 2 == pytest.approx(0.0624138, abs=APPROX)
    assert (T975[4] + T80[4]) * 0.03 / math.sqrt(5) == pytest.approx(0.0498743, abs=APPROX)
    assert seeds_for(0.05, 0.03) == 5
    assert seeds_for(0.0624139, 0.03) == 4  # just above the n = 4 value
    assert seeds_for(0.05, 0.0) == 2  # no spread: the fewest pairs that have an interval
    assert mdd(0.03, seeds_for(0.05, 0.03)) <= 0.05 < mdd(0.03, seeds_for(0.05, 0.03) - 1)


def test_seeds_for_is_the_smallest_n_far_from_the_start() -> None:
    n = seeds_for(0.001, 0.1)  # the normal bound: (1.959964 + 0.841621)² * 100² = 78488.8
    assert n > 78488
    assert mdd(0.1, n) <= 0.001 < mdd(0.1, n - 1)
    with pytest.raises(ValueError, match="delta must be positive"):
        seeds_for(0.0, 0.03)


# ----------------------------------------------------------------------------- vs random


def test_vs_random_mdd_and_seeds_in_rows() -> None:
    rows = by_method(board())
    a = rows["a"]["vs_random"]["acc"]
    assert a["n"] == 3 and a["verdict"] == "beats"
    assert a["mean"] == pytest.approx(0.20, abs=APPROX)
    assert a["sd"] == pytest.approx(0.03, abs=APPROX)
    assert a["ci95"] == pytest.approx(0.0745241, abs=APPROX)
    assert a["against"] == {"method": "random_init", "backbone": "resnet18",
                            "recipe": "quickstart"}
    assert rows["a"]["mdd"]["acc"] == pytest.approx(
        {"n": 3, "sd": 0.03, "mdd": 0.0928953, "delta": 0.05, "seeds_for_delta": 5},
        abs=APPROX)
    # B - random: [0.22, 0.22, 0.23]: mean 0.223333, sd sqrt(2/3 * 0.0001 / 2 ...) = 0.0057735
    b = rows["b"]["vs_random"]["acc"]
    assert b["mean"] == pytest.approx(0.2233333, abs=APPROX)
    assert b["sd"] == pytest.approx(0.0057735, abs=APPROX)
    assert b["ci95"] == pytest.approx(T975[2] * 0.0057735 / math.sqrt(3), abs=APPROX)
    assert b["ci95"] == pytest.approx(0.0143422, abs=APPROX)
    # MDD 5.363313 * 0.0057735 / sqrt(3) = 0.0178777; n = 2 would give 0.0574919 > 0.05
    assert rows["b"]["mdd"]["acc"]["mdd"] == pytest.approx(0.0178777, abs=APPROX)
    assert rows["b"]["mdd"]["acc"]["seeds_for_delta"] == 3
    # every metric gets its own: OOD is top-1 minus 0.1 on both sides, the same differences
    assert rows["a"]["vs_random"]["ood_acc"]["mean"] == pytest.approx(0.20, abs=APPROX)


def test_pairing_uses_only_shared_seeds() -> None:
    rows = by_method(aggregate(
        runs("random_init", RANDOM)
        + runs("extra", A + [0.10], seeds=[0, 1, 2, 3])  # seed 3 has no random-init partner
        + runs("gap", [0.40, 0.47, 0.99], seeds=[0, 1, 3])))  # no seed 2; seed 3 unpaired
    extra = rows["extra"]["vs_random"]["acc"]
    assert rows["extra"]["n"] == 4 and extra["n"] == 3
    assert extra["mean"] == pytest.approx(0.20, abs=APPROX)  # the 0.10 of seed 3 is left out
    assert extra["ci95"] == pytest.approx(0.0745241, abs=APPROX)
    # gap - random on seeds 0 and 1: [0.10, 0.12]: mean 0.11, sd 0.0141421,
    # half 12.706205 * 0.0141421 / sqrt(2) = 0.127062: the interval holds 0
    gap = rows["gap"]["vs_random"]["acc"]
    assert gap["n"] == 2 and gap["verdict"] == "tie"
    assert gap["mean"] == pytest.approx(0.11, abs=APPROX)
    assert gap["sd"] == pytest.approx(0.0141421, abs=APPROX)
    assert gap["ci95"] == pytest.approx(0.1270620, abs=APPROX)
    # MDD (12.706205 + 1.376382) * 0.0141421 / sqrt(2) = 0.1408259; n = 3: 0.0437916 <= 0.05
    assert rows["gap"]["mdd"]["acc"]["mdd"] == pytest.approx(0.1408259, abs=APPROX)
    assert rows["gap"]["mdd"]["acc"]["seeds_for_delta"] == 3


def test_verdicts_beats_tie_below_and_too_few_pairs() -> None:
    rows = by_method(aggregate(
        runs("random_init", RANDOM) + runs("a", A)
        + runs("worse", [0.20, 0.25, 0.21])       # [-0.10, -0.10, -0.11]
        + runs("level", [0.31, 0.34, 0.33])       # [0.01, -0.01, 0.01]
        + runs("single", [0.90], seeds=[1])))     # one pair: no interval
    assert rows["a"]["vs_random"]["acc"]["verdict"] == "beats"
    worse = rows["worse"]["vs_random"]["acc"]
    # mean -0.103333, sd 0.0057735, half 0.0143422: hi = -0.0889911 < 0
    assert worse["verdict"] == "below"
    assert worse["hi"] == pytest.approx(-0.0889911, abs=APPROX)
    level = rows["level"]["vs_random"]["acc"]
    # mean 0.003333, sd 0.0115470, half 4.302653 * 0.0115470 / sqrt(3) = 0.0286843
    assert level["verdict"] == "tie"
    assert level["ci95"] == pytest.approx(0.0286843, abs=APPROX)
    single = rows["single"]["vs_random"]["acc"]
    assert single["n"] == 1 and single["verdict"] == "n/a"
    assert single["mean"] == pytest.approx(0.55, abs=APPROX)
    assert single["sd"] is single["ci95"] is single["lo"] is single["hi"] is None
    assert rows["single"]["mdd"]["acc"] is None


def test_rows_without_a_random_init_partner() -> None:
    rows = aggregate(
        runs("random_init", RANDOM) + runs("a", A)
        + runs("raw_pixels", [0.25, 0.26, 0.27], backbone="pixels")
        + runs("vit_method", A, backbone="vit_tiny")               # no random init on vit_tiny
        + runs("knn_method", A, protocol="knn")                    # no random init in knn
        + runs("other_settings", A, protocol_settings={"solver": "sgd"})
        + runs("no_overlap", [0.6, 0.7], seeds=[7, 8]))
    named = by_method(rows)
    for method in ("random_init", "raw_pixels", "vit_method", "knn_method", "other_settings"):
        assert named[method]["vs_random"] == {"acc": None, "ood_acc": None}, method
        assert named[method]["mdd"] == {"acc": None, "ood_acc": None}, method
    # a partner without a shared seed: n 0, no mean
    assert named["no_overlap"]["vs_random"]["acc"]["n"] == 0
    assert named["no_overlap"]["vs_random"]["acc"]["mean"] is None
    assert named["no_overlap"]["mdd"]["acc"] is None


def test_random_partner_prefers_the_same_recipe_then_the_most_seeds() -> None:
    quick = {"name": "quickstart", "path": "q.yaml", "sha256": "q"}
    long_ = {"name": "long", "path": "l.yaml", "sha256": "l"}
    other = {"name": "other", "path": "o.yaml", "sha256": "o"}
    rows = by_method(aggregate(
        runs("random_init", [0.30, 0.35], recipe=quick)            # 2 seeds
        + runs("random_init", [0.10, 0.15, 0.12], recipe=long_)    # 3 seeds
        + runs("same", A, recipe=quick) + runs("odd", A, recipe=other)))
    assert rows["same"]["vs_random"]["acc"]["against"]["recipe"] == "quickstart"
    assert rows["same"]["vs_random"]["acc"]["n"] == 2
    assert rows["odd"]["vs_random"]["acc"]["against"]["recipe"] == "long"
    assert rows["odd"]["vs_random"]["acc"]["mean"] == pytest.approx(0.40, abs=APPROX)


# ----------------------------------------------------------------------------- vs best


def test_vs_best_paired_by_hand() -> None:
    rows = by_method(board())
    assert rows["b"]["best"]["acc"] is True and rows["b"]["vs_best"]["acc"] is None
    assert rows["a"]["best"]["acc"] is False
    # A - B: [-0.02, 0.01, -0.06]: mean -0.023333, sd 0.0351188, half 0.0872400
    d = rows["a"]["vs_best"]["acc"]
    assert d["paired"] is True and d["tie"] is True and d["verdict"] == "tie"
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(-0.0233333, abs=APPROX)
    assert d["sd"] == pytest.approx(0.0351188, abs=APPROX)
    assert d["ci95"] == pytest.approx(T975[2] * 0.0351188 / math.sqrt(3), abs=APPROX)
    assert d["ci95"] == pytest.approx(0.0872400, abs=APPROX)
    assert d["against"] == {"method": "b", "backbone": "resnet18", "recipe": "quickstart"}
    assert rows["random_init"]["vs_best"]["acc"]["tie"] is False


def test_paired_rule_separates_rows_whose_unpaired_intervals_overlap() -> None:
    # seeds move both a lot (0.60 .. 0.80) but Q is always 0.02 .. 0.03 below P
    recs = runs("p", [0.60, 0.70, 0.80]) + runs("q", [0.58, 0.67, 0.775])
    rows = aggregate(recs)
    p, q = by_method(rows)["p"], by_method(rows)["q"]
    # unpaired: P 0.70 ± 4.302653 * 0.1 / sqrt(3) = 0.70 ± 0.248414, Q 0.675 ± 0.242442
    assert p["metrics"]["acc"]["ci95"] == pytest.approx(0.2484138, abs=APPROX)
    assert q["metrics"]["acc"]["ci95"] == pytest.approx(0.2424422, abs=APPROX)
    assert 0.675 - 0.2424422 <= 0.70 + 0.2484138  # the unpaired rule would call it a tie
    # Q - P: [-0.02, -0.03, -0.025]: mean -0.025, sd 0.005, half 4.302653 * 0.005 / sqrt(3)
    d = q["vs_best"]["acc"]
    assert d["paired"] is True and d["tie"] is False and d["verdict"] == "below"
    assert d["mean"] == pytest.approx(-0.025, abs=APPROX)
    assert d["sd"] == pytest.approx(0.005, abs=APPROX)
    assert d["ci95"] == pytest.approx(0.0124207, abs=APPROX)
    assert d["hi"] == pytest.approx(-0.0125793, abs=APPROX)
    marks = mark_ties(rows)
    assert {rows[i]["method"]: m for i, (m, _) in marks.items()} == {"p": "best"}
    md = render_markdown(rows)
    assert "≈" not in md.split("## embedded")[1]
    q_line = next(line for line in md.splitlines() if line.startswith("| q |"))
    assert split_row(q_line)[3] == "67.5 ± 24.2"  # no "≈"


def test_vs_best_falls_back_to_the_unpaired_rule_with_fewer_than_two_pairs() -> None:
    # B: mean 0.546667, sd 0.0251661, CI 4.302653 * 0.0251661 / sqrt(3) = 0.0625168
    rows = by_method(aggregate(runs("b", B) + runs("near", [0.54], seeds=[0])
                               + runs("far", [0.40], seeds=[5])))
    assert rows["b"]["metrics"]["acc"]["ci95"] == pytest.approx(0.0625168, abs=APPROX)
    near = rows["near"]["vs_best"]["acc"]  # one shared pair; 0.54 lies in [0.48415, 0.60918]
    assert near["paired"] is False and near["tie"] is True and near["n"] == 1
    assert near["mean"] == pytest.approx(0.54 - 0.5466667, abs=APPROX)
    assert near["sd"] is near["ci95"] is None and near["verdict"] == "tie"
    far = rows["far"]["vs_best"]["acc"]  # no shared pair; 0.40 lies outside
    assert far["paired"] is False and far["tie"] is False and far["n"] == 0
    assert far["mean"] == pytest.approx(-0.1466667, abs=APPROX) and far["verdict"] == "below"


def test_best_does_not_depend_on_row_order() -> None:
    rows = aggregate(runs("x", [0.5, 0.6]) + runs("y", [0.6, 0.5]))  # equal means
    forward = best_comparisons(rows, "acc")
    backward = best_comparisons(rows[::-1], "acc")
    assert rows[forward[0][0]]["method"] == rows[::-1][backward[0][0]]["method"] == "x"


# ----------------------------------------------------------------------------- renderers


def test_markdown_paired_table_and_ties() -> None:
    md = render_markdown(board())
    check_markdown(md)
    assert "Δ vs random is the mean, over the (seed, eval seed) pairs" in md
    a_main = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert split_row(a_main)[3] == "52.3 ± 12.3 ≈"  # tie from the paired interval
    table = md.split("**Paired differences**")[1]
    assert split_row(table.splitlines()[2]) == [
        "Protocol", "Method", "Backbone", "Recipe", "Δ vs random (pts)", "MDD (pts)",
        "Seeds for 5 pts", "Δ vs best (pts)"]
    assert "| linear | a | resnet18 | quickstart | +20.0 ± 7.5 ✓ | 9.3 | 5 | -2.3 ± 8.7 ≈ |" in md
    assert "| linear | b | resnet18 | quickstart | +22.3 ± 1.4 ✓ | 1.8 | 3 | best |" in md
    assert "| linear | random_init | resnet18 | quickstart | reference | – | – | -22.3" in md


def test_markdown_marks_below_unpaired_and_fewer_pairs() -> None:
    md = render_markdown(aggregate(
        runs("random_init", RANDOM) + runs("worse", [0.20, 0.25, 0.21])
        + runs("extra", A + [0.11], seeds=[0, 1, 2, 3]) + runs("lone", [0.9], seeds=[9])))
    assert "| linear | worse | resnet18 | quickstart | -10.3 ± 1.4 ✗ |" in md
    assert "| linear | extra | resnet18 | quickstart | +20.0 ± 7.5 ✓ (3 pairs) |" in md
    lone = next(line for line in md.splitlines() if line.startswith("| linear | lone |"))
    assert split_row(lone)[4:] == ["no shared seeds", "–", "–", "best"]
    extra = next(line for line in md.splitlines() if line.startswith("| linear | extra |"))
    assert split_row(extra)[7] == "-48.0 unpaired"  # (1.57 + 0.11) / 4 - 0.9; no shared seed


def test_markdown_without_pairs_has_no_paired_table() -> None:
    md = render_markdown(aggregate(runs("a", [0.5])))
    assert "**Paired differences**" not in md


@pytest.mark.parametrize("evil", HOSTILE)
def test_paired_numbers_escape_hostile_names(evil: str) -> None:
    # such names are refused by the loader; both boards escape them anyway
    recs = (runs("random_init", RANDOM, backbone=evil, recipe={"name": evil})
            + runs(evil, A, backbone=evil, recipe={"name": evil}))
    rows = aggregate(recs)
    md = render_markdown(rows)
    check_markdown(md)
    assert "+20.0 ± 7.5 ✓" in md.split("**Paired differences**")[1]
    page = render_html(rows)
    check_html(page)
    assert "Δ vs random (pts)" in page and "+20.0" in page


def test_html_paired_columns_provenance_and_plot() -> None:
    page_text = render_html(board())
    page = Page(page_text)
    methods = column(page, "measured", "Method")
    delta = dict(zip(methods, column(page, "measured", "Δ vs random (pts)")))
    assert delta == {"b": "+22.3 ± 1.4 ✓", "a": "+20.0 ± 7.5 ✓",
                     "random_init baseline": "reference"}
    assert dict(zip(methods, column(page, "measured", "MDD (pts)"))) == {
        "b": "1.8", "a": "9.3", "random_init baseline": "–"}
    assert dict(zip(methods, column(page, "measured", "vs best"))) == {
        "b": "best", "a": "tie", "random_init baseline": ""}
    assert "paired difference -2.3 ± 8.7 points over 3 pairs (95% interval contains 0)" \
        in page_text
    assert "5 pairs would detect 5 points" in page_text
    assert "Top-1 minus random init, paired over seeds" in page_text
    (block,) = [b for a, b in page.scripts if a.get("type") == "application/json"]
    data = {r["method"]: r for r in json.loads(block)["rows"]}
    assert data["a"]["d_random"] == pytest.approx(0.20, abs=APPROX)
    assert data["a"]["mdd"] == pytest.approx(0.0928953, abs=APPROX)
    assert data["random_init"]["d_random"] is None


def test_render_json_carries_the_paired_fields() -> None:
    rows = board()
    back = json.loads(render_json(rows))
    assert back == rows
    a = by_method(back)["a"]
    assert set(a) >= {"per_seed", "vs_random", "mdd", "best", "vs_best"}
    assert a["per_seed"]["acc"] == [[0, 0, 0.50], [1, 0, 0.58], [2, 0, 0.49]]
    assert a["vs_random"]["acc"]["ci95"] == pytest.approx(0.0745241, abs=APPROX)
    assert a["mdd"]["acc"]["seeds_for_delta"] == 5
    assert a["vs_best"]["acc"]["paired"] is True
    assert by_method(back)["random_init"]["vs_random"]["acc"] is None


def test_render_json_writes_null_for_non_finite_numbers() -> None:
    # a NaN metric is refused by the loader; the JSON is standard all the same
    rows = aggregate(runs("random_init", RANDOM)
                     + [make_record(method="a", metrics={"acc": float("nan")})])
    text = render_json(rows)
    assert "NaN" not in text
    a = by_method(json.loads(text))["a"]
    assert a["metrics"]["acc"]["mean"] is None
    assert a["per_seed"] == {} and a["vs_random"]["acc"]["n"] == 0
    assert a["vs_best"]["acc"] is None and a["best"]["acc"] is False


def test_wandb_table_has_the_paired_columns(tmp_path: Path) -> None:
    for i, rec in enumerate(runs("random_init", RANDOM) + runs("a", A)):
        write_record(tmp_path / "results" / f"b{i}", rec)
    table = [dict(zip(LEADERBOARD_COLUMNS, r)) for r in leaderboard_rows(tmp_path)]
    a = next(r for r in table if r["method"] == "a")
    assert a["acc_vs_random"] == pytest.approx(20.0) and a["acc_vs_random_ci95"] == 7.452
    assert a["acc_vs_random_verdict"] == "beats" and a["acc_mdd"] == 9.29
    assert all(len(r) == len(LEADERBOARD_COLUMNS) for r in leaderboard_rows(tmp_path))
