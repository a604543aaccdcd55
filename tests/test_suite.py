"""`sslbench benchmark`: a suite of recipes x seeds, resumable, skipping finished cells."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import write_recipe
from sslbench.suite import load_suite, run_suite
from sslbench.cli import main
from sslbench.errors import UserError


def _suite(tmp_path) -> Path:
    recipe = write_recipe(tmp_path / "tiny.yaml", {
        "train": {"max_steps": 2, "batch_size": 32},
        "eval": {"protocols": ["knn"], "baselines": []},
        "leaderboard": {"dir": str(tmp_path / "lb"), "render": False}})
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "t", "seeds": [0, 1], "cells": [str(recipe)]}))
    return suite


@pytest.mark.slow
def test_suite_runs_cells_once_and_filters(tmp_path, capsys):
    suite = _suite(tmp_path)
    assert [s for _, s in run_suite(suite, dry_run=True, quiet=True)] == ["todo", "todo"]
    assert [s for _, s in run_suite(suite, only="tiny-s1", quiet=True)] == ["ran"]
    assert [s for _, s in run_suite(suite, dry_run=True, quiet=True)] == ["todo", "done"]
    assert main(["benchmark", str(suite), "--skip", "*-s0", "-q"]) == 0
    assert [s for _, s in run_suite(suite, quiet=True, skip="*-s0")] == ["done"]
    assert Path("runs/t/tiny-s1/backbone.safetensors").is_file()
    assert len(list((tmp_path / "lb" / "results" / "embedded").glob("*.json"))) == 1


@pytest.mark.slow
def test_suite_baselines_are_evaluated_once_per_seed_not_per_cell(tmp_path):
    suite = _suite(tmp_path)
    raw = yaml.safe_load(suite.read_text())
    recipe = raw["cells"][0]
    raw.update(seeds=[0], cells=[recipe, {"recipe": recipe, "overrides": ["train.max_steps=3"],
                                          "name": "tiny3"}],
               baselines=[{"recipe": recipe, "kinds": ["raw_pixels", "random_init"]}])
    suite.write_text(yaml.safe_dump(raw))
    _, cells = load_suite(suite)
    assert [c.name for c in cells] == ["tiny-s0", "tiny3-s0", "tiny-raw_pixels+random_init-s0"]
    assert all("eval.baselines=[]" in c.overrides for c in cells[:2])
    assert [s for _, s in run_suite(suite, quiet=True, only="*raw_pixels*")] == ["ran"]
    files = sorted(p.name for p in (tmp_path / "lb" / "results" / "embedded").glob("*.json"))
    assert [f.rsplit("__", 1)[0] for f in files] == [
        "tiny__random_init__test_resnet__knn__seed0__ev0",
        "tiny__raw_pixels__pixels__knn__seed0__ev0"]
    assert [s for _, s in run_suite(suite, dry_run=True, quiet=True)] == ["todo", "todo", "done"]


def test_entries_may_have_their_own_seeds(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "t", "seeds": [0, 1],
        "cells": ["a.yaml", {"recipe": "b.yaml", "seeds": [0, 1, 2, 5]}],
        "baselines": [{"recipe": "a.yaml", "kinds": ["random_init"], "seeds": [0, 1, 2, 5]}]}))
    _, cells = load_suite(suite)
    assert [c.name for c in cells] == ["a-s0", "a-s1", "b-s0", "b-s1", "b-s2", "b-s5",
                                       "a-random_init-s0", "a-random_init-s1",
                                       "a-random_init-s2", "a-random_init-s5"]
    assert [c.seed for c in cells if c.recipe == "b.yaml"] == [0, 1, 2, 5]


@pytest.mark.parametrize("seeds, message", [
    ([], "must be a non-empty list"), ([0, -1], "must be a non-empty list"),
    ("0-4", "must be a non-empty list"), ([0, 1.5], "must be a non-empty list"),
    ([True], "must be a non-empty list"), ([0, 1, 0], "lists a seed twice")])
def test_bad_seeds_name_the_entry(tmp_path, seeds, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cells": [{"recipe": "a.yaml", "seeds": seeds}]}))
    with pytest.raises(UserError, match=f"cell 0 seeds {message}"):
        load_suite(bad)
    bad.write_text(yaml.safe_dump({"seeds": seeds, "cells": ["a.yaml"]}))
    with pytest.raises(UserError, match=f"bad.yaml: seeds {message}"):
        load_suite(bad)
    bad.write_text(yaml.safe_dump({"cells": ["a.yaml"], "baselines": [
        {"recipe": "a.yaml", "kinds": ["random_init"], "seeds": seeds}]}))
    with pytest.raises(UserError, match=f"baselines entry 0 seeds {message}"):
        load_suite(bad)


def test_bad_suite_files(tmp_path):
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("celss: [a.yaml]\n")
    with pytest.raises(UserError, match="unknown key"):
        load_suite(bad)
    bad.write_text("cells: [a.yaml]\nbaselines: [{recipe: a.yaml}]\n")
    with pytest.raises(UserError, match="baselines entry 0 must be"):
        load_suite(bad)
    bad.write_text("cells: [a.yaml, {recipe: a.yaml, overrides: [train.seed=3]}]\n")
    with pytest.raises(UserError, match="two cells are named 'a-s0'"):
        load_suite(bad)
