"""One record schema (``record.schema.json``) for the writer, the loader and ``validate``; one bad
record file never stops a board."""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from conftest import make_record

from sslbench.cli import main
from sslbench.errors import UserError
from sslbench.identity import identity_hash, record_identity
from sslbench.leaderboard import validate_dir
from sslbench.leaderboard.html import render_html_dir
from sslbench.leaderboard.record import (
    KINDS, KNOWN_SCHEMA_VERSIONS, REQUIRED_FIELDS, record_path, record_schema, schema_problems,
    write_record,
)
from sslbench.leaderboard.render import render, write_board
from sslbench.leaderboard.store import load_record, load_records

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "sslbench" / "leaderboard" / "record.schema.json"
DATASET = {"name": "embedded", "fingerprint": "0123456789abcdef"}


def make_v2(**overrides: Any) -> dict[str, Any]:
    """A valid schema-v2 record: the v1 fields plus its identity and hash."""
    rec = make_record(schema_version=2, suite=None, **overrides)
    rec["identity"] = record_identity(rec, DATASET, {"train": {"lr": 0.1}})
    rec["identity_hash"] = identity_hash(rec["identity"])
    return rec


def published() -> Draft202012Validator:
    """A validator built from the file on disk, not through sslbench."""
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------- the file


def test_schema_file_is_valid_draft_2020_12_and_shipped() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert record_schema() == schema
    assert REQUIRED_FIELDS == tuple(schema["required"]) and "created" in REQUIRED_FIELDS
    assert KNOWN_SCHEMA_VERSIONS == (1, 2) and KINDS == ("measured", "reported")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "record.schema.json" in pyproject["tool"]["setuptools"]["package-data"][
        "sslbench.leaderboard"]
    assert any(d.startswith("jsonschema") for d in pyproject["project"]["dependencies"])


def test_v1_and_v2_records_are_valid() -> None:
    for rec in (make_record(), make_record(kind="reported", source="paper, Table 2"),
                make_v2(), make_v2(protocol_settings={"label_fraction": 0.1,
                                                      "feature_layer": 2}),
                make_v2(method="timm:resnet18", recipe={"name": None, "path": None,
                                                        "sha256": None})):
        assert schema_problems(rec) == []
        assert published().is_valid(rec)


def test_committed_records_pass_the_published_schema() -> None:
    files = sorted((REPO / "leaderboard" / "results").rglob("*.json"))
    assert len(files) > 100
    validator = published()
    for path in files:
        rec = json.loads(path.read_text(encoding="utf-8"))
        assert validator.is_valid(rec) and schema_problems(rec) == [], path


# ----------------------------------------------------------------------------- bad records


def _with(rec: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    rec = copy.deepcopy(rec)
    *parents, last = dotted.split(".")
    target = rec
    for key in parents:
        target = target[key]
    target[last] = value
    return rec


UNSAFE = ["../x", "/tmp/x", ".hid", "a/b", "a\\b", "a\nb", "", "a..b", "x" * 129, "a b", 3]


@pytest.mark.parametrize("field", ["method", "backbone", "dataset", "protocol", "recipe.name"])
@pytest.mark.parametrize("value", UNSAFE)
def test_names_must_be_safe_path_components(field: str, value: Any) -> None:
    rec = _with(make_record(), field, value)
    (problem,) = schema_problems(rec)
    assert problem.startswith(f"field '{field}' must be a safe name (")
    assert "\n" not in problem
    assert not published().is_valid(rec)  # the published schema says the same


@pytest.mark.parametrize("dotted, value, expected", [
    ("protocol_settings.label_fraction", "x",
     "field 'protocol_settings.label_fraction' must be a number in (0, 1], got \"x\""),
    ("protocol_settings.feature_layer", "3",
     "field 'protocol_settings.feature_layer' must be an integer or null (null: the final "
     "representation), got \"3\""),
    ("metrics", {"acc": 0.5, "a\nb": 2.0},
     "field 'metrics.\"a\\nb\"' must be a finite number in [0, 1], got 2.0"),
    ("kind", "reported", "missing field 'source' (reported records name the paper / table the "
                         "figure is from)"),
])
def test_bad_values_give_one_line_naming_the_field(dotted: str, value: Any,
                                                   expected: str) -> None:
    rec = _with(make_record(), dotted, value)
    assert schema_problems(rec) == [expected]
    assert not published().is_valid(rec)


def test_nan_is_caught_in_code_where_json_schema_cannot() -> None:
    for dotted in ("metrics.acc", "protocol_settings.label_fraction"):
        rec = _with(make_record(), dotted, float("nan"))
        assert published().is_valid(rec)  # JSON Schema has no notion of NaN
        (problem,) = schema_problems(rec)
        assert problem.startswith(f"field '{dotted}' must be") and problem.endswith("got NaN")


def test_v2_needs_identity_hash_and_suite() -> None:
    rec = make_v2()
    for field in ("identity", "identity_hash", "suite"):
        broken = {k: v for k, v in rec.items() if k != field}
        assert schema_problems(broken) == [
            f"missing field '{field}' (schema_version 2 records carry their identity)"]
    assert schema_problems(make_record()) == []  # v1: legacy, none of them needed


@pytest.mark.parametrize("dotted, value, expected", [
    ("identity_hash", "ABC", "field 'identity_hash' must be 16 lowercase hex digits, got \"ABC\""),
    ("identity.config_sha256", "xyz",
     "field 'identity.config_sha256' must be 16 lowercase hex digits, got \"xyz\""),
    ("identity.dataset.fingerprint", None,
     "field 'identity.dataset.fingerprint' must be 16 lowercase hex digits, got null"),
    ("identity.extra", 1, "field 'identity' has unknown key(s) \"extra\""),
    ("identity.settings.label_fraction", 0,
     "field 'identity.settings.label_fraction' must be a number in (0, 1], got 0"),
    ("suite", "../x", "field 'suite' must be a safe name or null (the suite that wrote the "
                      "record), got \"../x\""),
])
def test_v2_identity_shape(dotted: str, value: Any, expected: str) -> None:
    rec = _with(make_v2(), dotted, value)
    assert schema_problems(rec) == [expected]
    assert not published().is_valid(rec)


def test_v2_identity_must_describe_the_record_and_hash_to_identity_hash() -> None:
    rec = make_v2()
    for dotted, value, top in [("identity.method", "byol", "method"),
                               ("identity.protocol", "knn", "protocol"),
                               ("identity.seed", 7, "seed"), ("identity.eval_seed", 7, "eval_seed"),
                               ("identity.dataset.name", "cifar10", "dataset"),
                               ("identity.recipe", "long", "recipe.name")]:
        bad = _with(rec, dotted, value)
        bad["identity_hash"] = identity_hash(bad["identity"])  # a consistent hash, wrong field
        assert published().is_valid(bad)
        (problem,) = schema_problems(bad)
        assert problem.startswith(f"field '{dotted}' is {json.dumps(value)} but '{top}' is ")
    bad = _with(rec, "identity_hash", "0" * 16)
    assert schema_problems(bad) == [
        f"field 'identity_hash' is \"{'0' * 16}\" but the identity hashes to "
        f"\"{rec['identity_hash']}\""]


# ----------------------------------------------------------------------------- writer / loader


def test_writer_refuses_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        write_record(tmp_path / "results", make_record(
            protocol_settings={"label_fraction": "x"}))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("result record not written, it is invalid: field "
                              "'protocol_settings.label_fraction' must be a number in (0, 1]")
    assert message.endswith("(schema: sslbench/leaderboard/record.schema.json)")
    assert not (tmp_path / "results").exists()


def test_writer_and_loader_round_trip_v2(tmp_path: Path) -> None:
    rec = make_v2()
    path = write_record(tmp_path / "leaderboard" / "results", rec)
    assert path == record_path(tmp_path / "leaderboard" / "results", rec)
    assert load_record(path) == rec
    assert validate_dir(tmp_path / "leaderboard") == []


def test_label_fraction_x_everywhere(tmp_path: Path, capsys) -> None:
    """Issue 11: a record with ``label_fraction: "x"`` is refused by the writer, the loader and
    validate with one line, and the boards render everything else with one warning line."""
    board = tmp_path / "leaderboard"
    results = board / "results"
    good = write_record(results, make_record())
    write_record(results, make_record(method="byol", metrics={"acc": 0.7}))
    bad = results / "embedded" / "zz_bad.json"
    bad.write_text(json.dumps(make_record(method="dino",
                                          protocol_settings={"label_fraction": "x"})))
    problem = "field 'protocol_settings.label_fraction' must be a number in (0, 1], got \"x\""

    with pytest.raises(UserError, match="zz_bad.json: field 'protocol_settings.label_fraction'"):
        load_records(results)
    assert validate_dir(board) == [f"{bad}: {problem}"]
    capsys.readouterr()

    warning = [f"sslbench: warning: skipped {bad}: {problem}"]
    for fmt in ("md", "json", "csv"):
        text = render(results, fmt)
        assert "byol" in text and "simclr" in text and "dino" not in text
        assert capsys.readouterr().err.splitlines() == warning
    page = render_html_dir(results)
    assert "byol" in page and "dino" not in page
    assert capsys.readouterr().err.splitlines() == warning
    write_board(board, html=True)  # markdown and HTML from one load: one warning
    assert capsys.readouterr().err.splitlines() == warning
    assert "byol" in (board / "LEADERBOARD.md").read_text()
    assert "byol" in (board / "index.html").read_text()

    # through the CLI: rendering exits 0 with the warning; validate exits 2 naming the file
    assert main(["leaderboard", "--dir", str(board)]) == 0
    out, err = capsys.readouterr()
    assert "byol" in out and err.splitlines() == warning
    assert main(["leaderboard", "validate", str(board)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{bad}: {problem}"
    assert good.is_file()


def test_renderers_skip_broken_json_and_non_objects(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    write_record(results, make_record())
    (results / "embedded" / "a_broken.json").write_text("{not json")
    (results / "embedded" / "b_list.json").write_text("[1, 2]")
    md = render(results, "md")
    assert "simclr" in md
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sslbench: warning: skipped {results / 'embedded' / 'a_broken.json'}: not valid JSON: "
        f"Expecting property name enclosed in double quotes (line 1, column 2)",
        f"sslbench: warning: skipped {results / 'embedded' / 'b_list.json'}: must be a JSON "
        f"object, got list"]


def test_validate_reports_hidden_record_files(tmp_path: Path) -> None:
    """A record from a recipe named ``.hid.yaml`` is no longer skipped silently."""
    board = tmp_path / "leaderboard"
    write_record(board / "results", make_record())
    hidden = board / "results" / "embedded" / ".hid__simclr__resnet18__linear__seed0__ev0.json"
    hidden.write_text(json.dumps(make_record()))
    (problem,) = validate_dir(board)
    assert problem.startswith(f"{hidden}: hidden file")
    assert [r["method"] for r in load_records(board / "results")] == ["simclr"]
