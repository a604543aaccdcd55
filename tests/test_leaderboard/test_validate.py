"""``sslbench leaderboard validate``: every kind of broken record file is caught, the committed
leaderboard is clean."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record

from sslbench.cli import main
from sslbench.errors import UserError
from sslbench.leaderboard import validate_dir
from sslbench.leaderboard.record import (
    REQUIRED_FIELDS, record_path, schema_problems, validate_record, write_record,
)
from sslbench.leaderboard.store import load_records

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A clean leaderboard directory with two records; ``board / 'results'`` holds them."""
    board = tmp_path / "leaderboard"
    write_record(board / "results", make_record(seed=0))
    write_record(board / "results", make_record(seed=1, metrics={"acc": 0.7}))
    assert validate_dir(board) == []
    return board


def good_file(board: Path, seed: int = 0) -> Path:
    return record_path(board / "results", make_record(seed=seed))


def rewrite(path: Path, **changes: Any) -> None:
    rec = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del rec[key]
        else:
            rec[key] = value
    path.write_text(json.dumps(rec, indent=2))


_DELETE = object()


def only_problem(board: Path, path: Path) -> str:
    problems = validate_dir(board)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ")
    return problems[0][len(f"{path}: "):]


# ----------------------------------------------------------------------------- clean


def test_committed_leaderboard_is_clean() -> None:
    assert (REPO / "leaderboard" / "results").is_dir()
    assert validate_dir(REPO / "leaderboard") == []


def test_cli_clean_exits_0_with_summary(capsys) -> None:
    assert main(["leaderboard", "validate", str(REPO / "leaderboard")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith("all valid")


def test_cli_reports_problems_and_exits_2(board: Path, capsys) -> None:
    rewrite(good_file(board), kind="guessed")
    (board / "results" / "embedded" / "junk.json").write_text("[1, 2")
    assert main(["leaderboard", "validate", str(board)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(str(board / "results" / "embedded" / "junk.json") + ": ")
    assert lines[1].endswith("""field 'kind' must be "measured" (run here) or "reported" """
                             """(copied from a paper), got "guessed\"""")
    assert lines[2].startswith("2 problem(s) in 3 record file(s)")


def test_cli_default_dir_is_leaderboard(tmp_path: Path, capsys) -> None:
    # tests run in a fresh tmp cwd (tests/conftest.py); no ./leaderboard there
    assert main(["leaderboard", "validate"]) == 2
    assert "leaderboard: no such directory" in capsys.readouterr().out
    write_record(tmp_path / "leaderboard" / "results", make_record())
    assert main(["leaderboard", "validate"]) == 0


def test_results_dir_itself_can_be_validated(board: Path) -> None:
    assert validate_dir(board / "results") == []


def test_temp_files_are_ignored_and_hidden_records_reported(board: Path) -> None:
    """Atomic-write temp files end in ``.tmp``; a hidden ``*.json`` (e.g. from a recipe named
    ``.hid.yaml``) would be skipped by the board, so validate names it."""
    (board / "results" / "embedded" / ".x.json.tmp").write_text("{half")
    assert validate_dir(board) == []
    hidden = board / "results" / "embedded" / ".hid__simclr__resnet18__linear__seed0__ev0.json"
    hidden.write_text(json.dumps(make_record()))
    assert only_problem(board, hidden).startswith("hidden file: the board skips it")
    hidden.unlink()
    in_hidden_dir = board / "results" / ".cache" / "x.json"
    in_hidden_dir.parent.mkdir()
    in_hidden_dir.write_text("{}")
    assert only_problem(board, in_hidden_dir).startswith("hidden file")


# ----------------------------------------------------------------------------- one test per kind


def test_missing_directory(tmp_path: Path) -> None:
    assert validate_dir(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such directory"]


def test_invalid_json(board: Path) -> None:
    path = good_file(board)
    path.write_text(path.read_text()[:-5])
    assert only_problem(board, path).startswith("not valid JSON: ")


def test_not_an_object(board: Path) -> None:
    path = good_file(board)
    path.write_text("[]")
    assert only_problem(board, path) == "must be a JSON object, got list"


def test_duplicate_json_key_in_one_object(board: Path) -> None:
    path = good_file(board)
    text = path.read_text()
    path.write_text(text.replace('"method": "simclr"', '"method": "simclr", "method": "byol"'))
    assert only_problem(board, path) == "key 'method' appears twice in one JSON object"


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_unknown_schema_version(board: Path, version: Any) -> None:
    path = good_file(board)
    rewrite(path, schema_version=version)
    assert only_problem(board, path) == (
        f"unknown schema_version {json.dumps(version)} (known: 1, 2)")


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field(board: Path, field: str) -> None:
    path = good_file(board)
    rewrite(path, **{field: _DELETE})
    problem = validate_dir(board)[0]
    assert problem.startswith(f"{path}: ")
    assert (f"missing field '{field}'" in problem
            or (field == "schema_version" and "missing field 'schema_version'" in problem))


@pytest.mark.parametrize("field, value, expected", [
    ("method", 3, "field 'method' must be a safe name ("),
    ("seed", "0", "field 'seed' must be an integer"),
    ("seed", True, "field 'seed' must be an integer"),
    ("eval_seed", 0.5, "field 'eval_seed' must be an integer"),
    ("metrics", [0.5], "field 'metrics' must be a non-empty mapping"),
    ("recipe", "quickstart", "field 'recipe' must be a mapping"),
    ("pretrain", 5, "field 'pretrain' must be a mapping or null, got 5"),
    ("run_id", 7, "field 'run_id' must be a string or null, got 7"),
    ("wall_time_s", "fast", 'field \'wall_time_s\' must be a number or null, got "fast"'),
    ("provenance", None, "field 'provenance' must be a mapping"),
    ("source", 12, "field 'source' must be a non-empty string"),
    ("backbone_family", ["resnet"], "field 'backbone_family' must be a string"),
    ("protocol_settings", [], "field 'protocol_settings' must be a mapping"),
])
def test_wrong_field_type(board: Path, field: str, value: Any, expected: str) -> None:
    path = good_file(board)
    rewrite(path, **{field: value})
    assert only_problem(board, path).startswith(expected)


def test_recipe_name_must_be_text(board: Path) -> None:
    path = good_file(board)
    rewrite(path, recipe={"name": 3, "path": None, "sha256": None})
    assert only_problem(board, path).startswith("field 'recipe.name' must be a safe name (")
    assert only_problem(board, path).endswith(" or null, got 3")


def test_unknown_kind(board: Path) -> None:
    path = good_file(board)
    rewrite(path, kind="simulated")
    assert only_problem(board, path) == (
        """field 'kind' must be "measured" (run here) or "reported" (copied from a paper), """
        """got "simulated\"""")


@pytest.mark.parametrize("value, shown", [
    (1.5, "1.5"), (-0.01, "-0.01"), (61.2, "61.2"), ("0.5", '"0.5"'), (float("nan"), "NaN"),
    (float("inf"), "Infinity"), (float("-inf"), "-Infinity"), (None, "null"), (True, "true"),
])
def test_metric_out_of_range_or_not_a_number(board: Path, value: Any, shown: str) -> None:
    path = good_file(board)
    rewrite(path, metrics={"acc": value, "ood_acc": 0.4})
    assert only_problem(board, path) == (
        f"field 'metrics.acc' must be a finite number in [0, 1], got {shown}")


def test_empty_metrics(board: Path) -> None:
    path = good_file(board)
    rewrite(path, metrics={})
    assert only_problem(board, path) == (
        "field 'metrics' must be a non-empty mapping of metric name to accuracy in [0, 1], got {}")


def test_created_must_be_a_timestamp(board: Path) -> None:
    path = good_file(board)
    rewrite(path, created="yesterday")
    assert only_problem(board, path) == (
        'field \'created\' must be an ISO 8601 timestamp, got "yesterday"')
    rewrite(path, created="2026-13-45T00:00:00+00:00")  # the right shape, not a real date
    assert only_problem(board, path) == (
        'field \'created\' must be an ISO 8601 timestamp, got "2026-13-45T00:00:00+00:00"')


def test_renamed_file(board: Path) -> None:
    path = good_file(board)
    moved = path.with_name("best_simclr_ever.json")
    path.rename(moved)
    assert only_problem(board, moved) == (
        "file name does not match the record; it belongs at "
        "embedded/quickstart__simclr__resnet18__linear__seed0__ev0.json")


def test_file_in_wrong_dataset_folder(board: Path) -> None:
    path = good_file(board)
    moved = board / "results" / "cifar10" / path.name
    moved.parent.mkdir()
    path.rename(moved)
    assert "it belongs at embedded/" in only_problem(board, moved)


@pytest.mark.parametrize("field, value", [("method", "byol"), ("seed", 7), ("eval_seed", 3),
                                          ("protocol", "knn"), ("dataset", "cifar10")])
def test_hand_edited_key(board: Path, field: str, value: Any) -> None:
    path = good_file(board)
    rewrite(path, **{field: value})
    assert only_problem(board, path).startswith("file name does not match the record")


def test_hand_edited_recipe_name(board: Path) -> None:
    path = good_file(board)
    rewrite(path, recipe={"name": "long", "path": "recipes/long.yaml", "sha256": "ff"})
    assert "it belongs at embedded/long__simclr__" in only_problem(board, path)


def test_duplicate_record_key_across_files(board: Path) -> None:
    path = good_file(board)
    copy = board / "results" / "embedded" / "zz_copy.json"
    shutil.copy(path, copy)
    problems = validate_dir(board)
    assert len(problems) == 2, problems
    assert all(p.startswith(f"{copy}: ") for p in problems)
    assert "file name does not match" in problems[0]
    assert problems[1] == (f"{copy}: duplicate record: same key "
                           f"(embedded/quickstart__simclr__resnet18__linear__seed0__ev0.json) "
                           f"as {path}")


def test_label_fraction_is_part_of_the_key(board: Path) -> None:
    rec = make_record(protocol_settings={"solver": "lbfgs", "label_fraction": 0.1})
    path = write_record(board / "results", rec)
    assert path != good_file(board)
    assert validate_dir(board) == []


@pytest.mark.parametrize("fraction", [0, 1.5, "10%", "x", None, float("nan"), True])
def test_label_fraction_out_of_range(board: Path, fraction: Any) -> None:
    path = good_file(board)
    rewrite(path, protocol_settings={"solver": "lbfgs", "label_fraction": fraction})
    assert only_problem(board, path) == (
        f"field 'protocol_settings.label_fraction' must be a number in (0, 1], "
        f"got {json.dumps(fraction)}")


def test_reported_record_needs_a_source(board: Path) -> None:
    reported = make_record(kind="reported", method="simclr", backbone="resnet50",
                           run_id=None, pretrain=None, provenance={}, wall_time_s=None,
                           recipe={"name": "paper", "path": None, "sha256": None})
    path = write_record(board / "results", dict(reported, source="Chen et al. 2020, Table 8"))
    assert validate_dir(board) == []
    rewrite(path, source=_DELETE)
    assert only_problem(board, path) == (
        "missing field 'source' (reported records name the paper / table the figure is from)")
    rewrite(path, source="   ")
    assert only_problem(board, path).startswith("field 'source' must be a non-empty string")


def test_every_problem_is_one_line_per_file(board: Path) -> None:
    path = good_file(board)
    rewrite(path, kind="x", metrics={"acc": 2.0}, seed="s")
    problems = validate_dir(board)
    assert len(problems) == 3
    assert all(p.startswith(f"{path}: ") and "\n" not in p for p in problems)


# ----------------------------------------------------------------------------- record schema


def test_source_is_optional_and_backward_compatible(tmp_path: Path) -> None:
    assert validate_record is schema_problems  # the public name is the one schema check
    assert validate_record(make_record()) == []
    assert "source" not in make_record()
    assert validate_record(make_record(kind="reported")) == [
        "missing field 'source' (reported records name the paper / table the figure is from)"]
    assert validate_record(make_record(kind="reported", source="paper, Table 1")) == []
    assert validate_record(make_record(kind="bogus"))[0].startswith("field 'kind' must be")
    bad = tmp_path / "results" / "x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(make_record(kind="reported")))
    with pytest.raises(UserError, match="missing field 'source'"):
        load_records(tmp_path / "results")
