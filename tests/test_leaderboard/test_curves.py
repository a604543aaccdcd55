"""Training loss curves on the board: kept in records, averaged per row, drawn in the HTML."""
from __future__ import annotations

from conftest import make_record

from sslbench.leaderboard.aggregation import aggregate


def _rec(seed: int, protocol: str, curve: list[list[float]] | None, **kw):
    pretrain = {"steps": 60, "wall_time_s": 5.0}
    if curve is not None:
        pretrain["loss_curve"] = curve
    return make_record(seed=seed, run_id=f"run-{seed}", protocol=protocol, pretrain=pretrain, **kw)


def test_row_curve_is_the_mean_over_runs_at_shared_steps():
    a = [[20, 4.0], [40, 3.0], [60, 2.0]]
    b = [[20, 6.0], [40, 5.0], [60, 4.0], [80, 1.0]]  # step 80 only in one run: dropped
    records = [_rec(0, "linear", a), _rec(1, "linear", b),
               # a second eval seed of run 0 counts run 0 once, not twice
               _rec(0, "linear", a, eval_seed=1)]
    row, = aggregate(records)
    curve = row["loss_curve"]
    assert curve["steps"] == [20, 40, 60] and curve["runs"] == 2
    assert curve["mean"] == [5.0, 4.0, 3.0]
    assert curve["min"] == [4.0, 3.0, 2.0] and curve["max"] == [6.0, 5.0, 4.0]


def test_rows_without_curves_have_none():
    row, = aggregate([_rec(0, "linear", None), _rec(1, "linear", None)])
    assert row["loss_curve"] is None
    base, = aggregate([make_record(method="random_init", run_id=None, pretrain=None)])
    assert base["loss_curve"] is None


# ----------------------------------------------------------------------------- on the page

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from test_escaping import HOSTILE, check_html  # noqa: E402
from test_html import page_for  # noqa: E402

from sslbench.leaderboard.html import render_html  # noqa: E402
from sslbench.leaderboard.curves import (  # noqa: E402
    fraction_series, protocol_rows, settings_label,
)


def _plots(text: str) -> str:
    return text.split("<h2>Plots</h2>")[1]


def _figure(plots: str, caption: str) -> str:
    """The SVG of the figure whose caption starts with ``caption``."""
    for fig in plots.split("<figure>")[1:]:
        if f"<b>{caption}</b>" in fig:
            return fig.split("</svg>")[0]
    raise AssertionError(f"no figure {caption!r}")


def test_loss_curves_drawn_per_subject(tmp_path: Path):
    a = [[20, 4.0], [40, 3.0], [60, 2.0]]
    b = [[20, 6.0], [40, 5.0], [60, 4.0]]
    text = page_for(tmp_path, _rec(0, "linear", a), _rec(1, "linear", b),
                    _rec(0, "linear", [[10, 0.9], [20, 0.5]], method="mae", backbone="vit"),
                    make_record(method="random_init", run_id=None, pretrain=None))
    fig = _figure(_plots(text), "Pretraining loss")
    assert fig.count("<polyline") == 2  # simclr·resnet18 and mae·vit; the baseline has none
    assert fig.count("<polygon") == 1  # a band only where there are >= 2 runs
    assert "simclr · resnet18: loss 5 at step 20 -&gt; 3 at step 60 (mean of 2 runs)" in fig
    assert "mae · vit" in fig


def test_no_loss_figure_without_curves(tmp_path: Path):
    text = page_for(tmp_path, _rec(0, "linear", None), _rec(1, "linear", None))
    assert "Pretraining loss" not in _plots(text)


def _frac(f: float, acc: float, seed: int = 0, **kw):
    return make_record(seed=seed, metrics={"acc": acc},
                       protocol_settings={"solver": "lbfgs", "label_fraction": f}, **kw)


def test_label_fractions_become_one_curve_not_panels(tmp_path: Path):
    records = [_frac(f, acc, s) for f, acc in ((1.0, 0.8), (0.1, 0.6), (0.01, 0.3))
               for s in (0, 1)]
    records += [_frac(f, acc, s, method="byol") for f, acc in ((1.0, 0.7), (0.1, 0.5))
                for s in (0, 1)]
    records.append(_frac(0.1, 0.4, method="mae"))  # one fraction only: no line
    plots = _plots(page_for(tmp_path, *records))
    fig = _figure(plots, "Top-1 vs label fraction")
    assert fig.count("<polyline") == 2 and fig.count("<circle") == 5
    for tick in ("1%", "10%", "100%"):
        assert f">{tick}</text>" in fig
    assert "simclr · resnet18 with 1% of the labels: 30.0 ± 0.0 % (n=2)" in fig
    # the full-label panel stays; the 10% and 1% panels are replaced by the curve
    headings = re.findall(r"<h4>(.*?)</h4>", plots)
    assert headings == ["linear · label fractions", "linear"]


def test_fraction_panels_stay_without_a_curve(tmp_path: Path):
    plots = _plots(page_for(tmp_path, _frac(1.0, 0.8), _frac(0.1, 0.6, method="byol")))
    assert "Top-1 vs label fraction" not in plots
    assert re.findall(r"<h4>(.*?)</h4>", plots) == ["linear", "linear · 10% labels"]


def test_fraction_series_needs_two_fractions():
    rows = aggregate([_frac(1.0, 0.8), _frac(0.1, 0.6), _frac(0.1, 0.5, method="byol")])
    series = fraction_series(rows)
    assert list(series) == [("simclr", "resnet18", "quickstart")]
    assert [r["protocol_settings"]["label_fraction"] for r in series[list(series)[0]]] == [0.1,
                                                                                          1.0]


def _proto(protocol: str, acc: float, ood: float, seed: int = 0, **kw):
    kw.setdefault("protocol_settings",
                  {"epochs": 5} if protocol != "linear" else {"solver": "lbfgs"})
    return make_record(protocol=protocol, seed=seed, metrics={"acc": acc, "ood_acc": ood}, **kw)


def test_linear_vs_finetune_vs_lpft_figure(tmp_path: Path):
    records = [_proto(p, acc, ood, s) for p, acc, ood in
               (("linear", 0.70, 0.50), ("finetune", 0.85, 0.45), ("lpft", 0.86, 0.55))
               for s in (0, 1)]
    records.append(_proto("linear", 0.6, 0.4, method="byol"))  # one protocol only: left out
    records.append(_proto("knn", 0.6, 0.4))  # not an adaptation protocol
    fig = _figure(_plots(page_for(tmp_path, *records)), "Linear probe vs fine-tuning vs LP-FT")
    assert fig.count("<rect") == 3 + 3  # 3 bars + 3 legend swatches
    assert "simclr · resnet18 — fine-tuning: 85.0 ± 0.0 % (n=2)" in fig
    assert "simclr · resnet18 — LP-FT, OOD: 55.0 ± 0.0 %" in fig
    assert "byol" not in fig and "knn" not in fig


def test_protocol_rows_pick_full_labels_and_most_seeds():
    rows = aggregate([_proto("linear", 0.7, 0.5, s) for s in (0, 1, 2)]
                     + [_proto("finetune", 0.8, 0.5)]
                     + [make_record(protocol="finetune", metrics={"acc": 0.9},
                                    protocol_settings={"epochs": 9, "label_fraction": 0.1})])
    (subject, per), = protocol_rows(rows).items()
    assert sorted(per) == ["finetune", "linear"]
    assert per["linear"]["n"] == 3 and per["finetune"]["protocol_settings"]["epochs"] == 5


def test_settings_variants_are_named_by_what_differs(tmp_path: Path):
    a = {"epochs": 5, "lr_grid": [0.001, 0.01]}
    b = {"epochs": 5, "lr_grid": [0.1]}
    assert settings_label(a, [a, b]) == "lr_grid=[0.001,0.01]"
    assert settings_label({**a, "label_fraction": 0.1}, [a]) == ""
    plots = _plots(page_for(tmp_path, make_record(protocol="finetune", protocol_settings=a),
                            make_record(protocol="finetune", protocol_settings=b,
                                        method="byol")))
    headings = re.findall(r"<h4>(.*?)</h4>", plots)
    assert headings == ["finetune · lr_grid=[0.001,0.01]", "finetune · lr_grid=[0.1]"]
    assert "settings variant" not in plots


@pytest.mark.parametrize("evil", HOSTILE)
def test_new_figures_escape_names(evil: str):
    # past the schema (which refuses such names): the renderer must escape on its own
    records = [_rec(s, "linear", [[1, 2.0], [2, 1.0]], method=evil) for s in (0, 1)]
    records += [_frac(0.1, 0.5, s, method=evil) for s in (0, 1)]
    records += [_proto("finetune", 0.8, 0.5, s, method=evil,
                       protocol_settings={"epochs": 5, "note": evil}) for s in (0, 1)]
    records += [_proto("finetune", 0.8, 0.5, s, method=evil) for s in (0, 1)]
    page = render_html(aggregate(records))
    plots = _plots(page)
    for caption in ("Pretraining loss", "Top-1 vs label fraction",
                    "Linear probe vs fine-tuning vs LP-FT"):
        assert _figure(plots, caption)
    check_html(page)
