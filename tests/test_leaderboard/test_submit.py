"""``sslbench leaderboard submit SRC --to BOARD``: only suite records from committed code reach
the board; a refusal writes nothing; superseded records are replaced; a repeat changes nothing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record, make_record_v2

from sslbench.cli import main
from sslbench.leaderboard import render
from sslbench.leaderboard.record import record_path, write_record


v2 = make_record_v2


def put(board: Path, rec: dict[str, Any]) -> Path:
    """Write ``rec`` into ``board``'s results as it is (no validation) and return its path."""
    path = record_path(board / "results", rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    return path


def snapshot(*dirs: Path) -> dict[str, str]:
    """SHA-256 of every file under ``dirs``."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def submit(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["leaderboard", "submit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def boards(tmp_path: Path) -> tuple[Path, Path]:
    """A suite's board ``src`` (3 v2 records) and a committed-like board ``dest`` holding a
    legacy record of one of src's slots (seed 0, linear) and an unrelated legacy record."""
    src, dest = tmp_path / "runs" / "suite", tmp_path / "committed"
    for seed in (0, 1):
        write_record(src / "results", v2(seed=seed, metrics={"acc": 0.5 + seed / 10}))
    write_record(src / "results", v2(seed=0, protocol="knn", metrics={"acc": 0.4}))
    write_record(dest / "results", make_record(seed=0, metrics={"acc": 0.9}))
    write_record(dest / "results", make_record(method="mae", metrics={"acc": 0.3}))
    return src, dest


# ----------------------------------------------------------------------------- refusals


REFUSALS = {
    "legacy v1": (lambda: make_record(seed=2), "schema_version 1 record without an identity"),
    "reported": (lambda: v2(seed=2, kind="reported", source="a paper"),
                 "kind 'reported' is not 'measured'"),
    "no commit": (lambda: v2(seed=2, provenance={"git_commit": None, "git_dirty": None}),
                  "no provenance.git_commit"),
    "dirty": (lambda: v2(seed=2, provenance={"git_commit": "0123abcd", "git_dirty": True}),
              "produced by uncommitted code; commit, then re-run"),
    "no suite": (lambda: v2(seed=2, suite=None),
                 "not produced by a suite run: run it with sslbench benchmark"),
    "no recipe file": (lambda: v2(seed=2, recipe={"path": None, "sha256": None,
                                                  "name": "quickstart"}),
                       "recipe.path is null"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_writes_nothing(boards, capsys, case):
    src, dest = boards
    make, reason = REFUSALS[case]
    bad = put(src, make())
    before = snapshot(src, dest)
    code, out, err = submit(capsys, str(src), "--to", str(dest))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sslbench: error: refused {bad} (nothing submitted): ")
    assert reason in lines[0]
    assert snapshot(src, dest) == before


def test_bad_source_file_refuses_whole_submission(boards, capsys):
    src, dest = boards
    bad = src / "results" / "embedded" / "broken.json"
    bad.write_text("{not json")
    before = snapshot(src, dest)
    code, out, err = submit(capsys, str(src), "--to", str(dest))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not valid JSON" in lines[0]
    assert snapshot(src, dest) == before


def test_two_source_records_for_one_slot_are_refused(boards, capsys):
    src, dest = boards
    other = put(src, v2(seed=0, config={"optim": {"lr": 0.2}}, metrics={"acc": 0.7}))
    before = snapshot(src, dest)
    code, _, err = submit(capsys, str(src), "--to", str(dest))
    assert code == 2 and "fills the same board slot" in err and str(other) in err
    assert snapshot(src, dest) == before


@pytest.mark.parametrize("argv, message", [
    (["missing"], "leaderboard directory missing does not exist"),
    ([], "'sslbench leaderboard submit' takes SRC, got 0 directories"),
    (["empty"], "no result records under empty/results"),
    (["committed"], "is the destination board itself"),
])
def test_bad_arguments(boards, capsys, argv, message):
    src, dest = boards
    (dest.parent / "empty").mkdir()
    before = snapshot(src, dest)
    code, out, err = submit(capsys, *argv, "--to", "committed")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and message in lines[0], err
    assert snapshot(src, dest) == before


# ----------------------------------------------------------------------------- submitting


def test_submit_adds_replaces_and_renders(boards, capsys):
    src, dest = boards
    legacy = record_path(dest / "results", make_record(seed=0))
    unrelated = record_path(dest / "results", make_record(method="mae"))
    code, out, err = submit(capsys, str(src), "--to", str(dest))
    assert code == 0 and err == ""
    assert f"replaced {legacy} (legacy v1 record)" in out
    assert out.strip().splitlines()[-1] == (
        f"submitted {src} -> {dest}: 2 added, 1 replaced, 0 unchanged; "
        f"re-rendered {dest / 'LEADERBOARD.md'}")
    assert not legacy.exists() and unrelated.exists()
    for p in sorted((src / "results").rglob("*.json")):
        copied = dest / "results" / p.relative_to(src / "results")
        assert copied.read_bytes() == p.read_bytes()
    board = (dest / "LEADERBOARD.md").read_text()
    assert board == render(dest / "results", "md")
    assert "55.0 ± 63.5" in board and "| mae | resnet18 | quickstart |" in board
    assert "90.0" not in board  # the replaced legacy seed-0 value
    assert (dest / "index.html").is_file()


def test_second_submit_changes_nothing(boards, capsys):
    src, dest = boards
    assert submit(capsys, str(src), "--to", str(dest))[0] == 0
    before = snapshot(src, dest)
    code, out, _ = submit(capsys, str(src), "--to", str(dest))
    assert code == 0
    assert out.strip() == f"submitted {src} -> {dest}: 0 added, 0 replaced, 3 unchanged"
    assert snapshot(src, dest) == before


def test_new_identity_supersedes_the_old_one(boards, capsys, tmp_path):
    src, dest = boards
    assert submit(capsys, str(src), "--to", str(dest))[0] == 0
    old = record_path(dest / "results", v2(seed=1, metrics={"acc": 0.6}))
    assert old.is_file()
    newer = tmp_path / "runs" / "newer"
    rec = v2(seed=1, config={"optim": {"lr": 0.2}}, metrics={"acc": 0.8})
    write_record(newer / "results", rec)
    code, out, _ = submit(capsys, str(newer), "--to", str(dest))
    new = record_path(dest / "results", rec)
    assert code == 0 and new != old
    assert f"replaced {old} (different identity) with {new.name}" in out
    # seed 0 of the row, made with the old lr, leaves too: a row holds one design
    seed0 = record_path(dest / "results", v2(seed=0, metrics={"acc": 0.5}))
    assert (f"retired {seed0} (other config: optim.lr: 0.1 -> 0.2; its row is now the "
            f"submitted design)") in out
    assert out.strip().splitlines()[-1].startswith(
        f"submitted {newer} -> {dest}: 0 added, 1 replaced, 0 unchanged, 1 retired")
    assert not old.exists() and not seed0.exists() and json.loads(new.read_text()) == rec
    board = (dest / "LEADERBOARD.md").read_text()
    simclr = [line for line in board.splitlines() if line.startswith("| simclr |")]
    assert simclr[0].startswith("| simclr | resnet18 | quickstart | **80.0** | 40.0 | 1 |")
    assert "65.0" not in board  # seed 0 of the old lr is no longer averaged in


def test_fewer_seeds_of_a_new_design_retire_the_old_design_in_their_rows(tmp_path, capsys):
    """Seeds 0-1 of a new design over a row of three legacy seeds: seeds 0-1 are replaced,
    seed 2 (legacy, unfilled) is retired, not averaged with the new design; other rows and
    records of the new design's own other seeds stay."""
    dest, src = tmp_path / "committed", tmp_path / "runs" / "suite"
    for seed in (0, 1, 2):
        write_record(dest / "results", make_record(seed=seed, metrics={"acc": 0.9}))
    other_row = write_record(dest / "results", make_record(method="mae", seed=2))
    for seed in (0, 1):
        write_record(src / "results", v2(seed=seed, metrics={"acc": 0.5}))
    code, out, _ = submit(capsys, str(src), "--to", str(dest), "--dry-run")
    assert code == 0 and "would retire" in out and "1 retired" in out
    code, out, _ = submit(capsys, str(src), "--to", str(dest))
    legacy2 = record_path(dest / "results", make_record(seed=2))
    assert code == 0 and f"retired {legacy2} (legacy v1 record;" in out
    assert "0 added, 2 replaced, 0 unchanged, 1 retired" in out
    assert not legacy2.exists() and other_row.exists()
    left = [json.loads(p.read_text()) for p in (dest / "results").rglob("*.json")]
    assert sorted((r["method"], r["seed"], r["schema_version"]) for r in left) == [
        ("mae", 2, 1), ("simclr", 0, 2), ("simclr", 1, 2)]
    # a later seed of the same design joins its row and retires nothing
    more = tmp_path / "runs" / "more"
    write_record(more / "results", v2(seed=2, metrics={"acc": 0.55}))
    code, out, _ = submit(capsys, str(more), "--to", str(dest))
    assert code == 0 and "retired" not in out and "1 added, 0 replaced" in out


def test_same_identity_new_run_replaces_the_file(boards, capsys, tmp_path):
    src, dest = boards
    assert submit(capsys, str(src), "--to", str(dest))[0] == 0
    again = tmp_path / "runs" / "again"
    rec = v2(seed=1, metrics={"acc": 0.6}, created="2026-02-01T00:00:00+00:00")
    write_record(again / "results", rec)
    code, out, _ = submit(capsys, str(again), "--to", str(dest))
    path = record_path(dest / "results", rec)
    assert code == 0 and f"replaced {path} (same identity, new run)" in out
    assert "0 added, 1 replaced, 0 unchanged" in out
    assert json.loads(path.read_text())["created"] == "2026-02-01T00:00:00+00:00"


def test_dry_run_writes_nothing(boards, capsys):
    src, dest = boards
    before = snapshot(src, dest)
    code, out, _ = submit(capsys, str(src), "--to", str(dest), "--dry-run")
    assert code == 0 and snapshot(src, dest) == before
    assert not (dest / "LEADERBOARD.md").exists()
    lines = out.strip().splitlines()
    assert lines[0].startswith("would replace ") and "(legacy v1 record)" in lines[0]
    assert sum(line.startswith("would add ") for line in lines) == 2
    assert lines[-1] == (f"dry run, nothing written: {src} -> {dest}: 2 added, 1 replaced, "
                         f"0 unchanged")


def test_submit_into_a_new_board(boards, capsys, tmp_path):
    src, _ = boards
    fresh = tmp_path / "fresh"
    code, out, _ = submit(capsys, str(src), "--to", str(fresh))
    assert code == 0 and "3 added, 0 replaced, 0 unchanged" in out
    assert len(list((fresh / "results").rglob("*.json"))) == 3
    assert (fresh / "LEADERBOARD.md").is_file()
