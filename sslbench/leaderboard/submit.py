"""``sslbench leaderboard submit``: validate the records of a results board and copy them into
another board (the committed ``leaderboard/``), replacing the records they supersede.

Only records that a suite run (``sslbench benchmark``) made from committed code with a recipe
file are accepted; one bad record refuses the whole submission before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BOARD_DIR
from ..errors import UserError
from ..identity import config_diff, describe_diff
from ..utils import atomic_write
from .compare import results_dir, row_key
from .record import record_path
from .store import load_record


@dataclass
class Plan:
    """What a submission does: copies (source, destination, status) and removals."""

    copies: list[tuple[Path, Path, str]] = field(default_factory=list)  # added|replaced|unchanged
    removals: list[tuple[Path, Path, str]] = field(default_factory=list)  # (old, new, why)
    # board records of a submitted row made under another design, whose seeds the submission
    # does not fill: (old, why). A row holds one design, so they leave the board.
    retired: list[tuple[Path, str]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(s == status for _, _, s in self.copies)


def _record_files(results: Path) -> list[Path]:
    """Record files under ``results`` in sorted order, hidden names skipped (as the loader)."""
    if not results.is_dir():
        return []
    return [p for p in sorted(results.rglob("*.json"))
            if not any(part.startswith(".") for part in p.relative_to(results).parts)
            and p.is_file()]


def _load_all(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    try:
        return [(p, load_record(p)) for p in _record_files(results)]
    except UserError as e:
        raise UserError(f"submission refused, nothing written: {e}") from None


def refusal(rec: dict[str, Any]) -> str | None:
    """Why ``rec`` may not go onto the committed board (None when it may)."""
    if rec.get("schema_version") != 2:
        return (f"schema_version {rec.get('schema_version')!r} record without an identity; "
                f"re-run it with this version of sslbench (sslbench benchmark)")
    if rec.get("kind") != "measured":
        return f"kind {rec.get('kind')!r} is not 'measured'; only measured records can be submitted"
    prov = rec.get("provenance") or {}
    if not prov.get("git_commit"):
        return ("no provenance.git_commit (not produced from a git checkout); run it from a "
                "clone of the sslbench repository")
    if prov.get("git_dirty") is True:
        return "produced by uncommitted code; commit, then re-run"
    if prov.get("git_dirty") is not False:
        return "provenance.git_dirty is not recorded; re-run it from a clone of the repository"
    if not rec.get("suite"):
        return "not produced by a suite run: run it with sslbench benchmark"
    if not (rec.get("recipe") or {}).get("path"):
        return "recipe.path is null (not made from a recipe file); run it from a suite recipe"
    return None


def slot(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The board position a record fills: its row plus (seed, eval_seed)."""
    return (*row_key(rec), rec["seed"], rec["eval_seed"])


def _why_replaced(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("schema_version") != 2 or "identity_hash" not in old:
        return "legacy v1 record"
    if old.get("identity_hash") != new.get("identity_hash"):
        return "different identity"
    return "same identity, new run"


def other_design(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why board record ``old`` of a row comes from another design than the submitted record
    ``new`` of that row (None when only the seeds differ): a legacy v1 record, another config
    in any key that can change a number but the pretraining seed, or another dataset identity
    (its content or the evaluation sets built from it)."""
    if old.get("schema_version") != 2 or not isinstance(old.get("identity"), dict):
        return "legacy v1 record"
    diff = config_diff(old.get("config") or {}, new.get("config") or {}, ignore=("train.seed",))
    if diff:
        return f"other config: {describe_diff(diff, limit=2)}"
    if old["identity"].get("dataset") != (new.get("identity") or {}).get("dataset"):
        return "other dataset identity"
    return None


def plan_submission(src: str | Path, to: str | Path) -> Plan:
    """Check every record of board ``src`` and work out the copies into board ``to``.

    Raises:
        UserError: a missing or empty source, an unreadable or invalid record file in either
            board, a record that may not be submitted, or two source records for one slot.
    """
    src_results, to_results = results_dir(src), Path(to) / "results"
    if Path(to).exists() and not Path(to).is_dir():
        raise UserError(f"--to {to} is not a directory; pass a leaderboard directory")
    if Path(to).resolve() == Path(src).resolve():
        raise UserError(f"{src} is the destination board itself; pass the board to submit "
                        f"and --to the committed board (default leaderboard)")
    source = _load_all(src_results)
    if not source:
        raise UserError(f"no result records under {src_results}; run a suite into it first "
                        f"(sslbench benchmark SUITE leaderboard.dir={src})")
    seen: dict[tuple[Any, ...], Path] = {}
    for path, rec in source:
        why = refusal(rec)
        if why:
            raise UserError(f"refused {path} (nothing submitted): {why}")
        other = seen.setdefault(slot(rec), path)
        if other != path:
            raise UserError(f"refused {path} (nothing submitted): {other} fills the same "
                            f"board slot (dataset, recipe, method, backbone, protocol, settings, "
                            f"seeds); remove one of the two")
    on_board = dict(_load_all(to_results))
    existing = [(p, r) for p, r in on_board.items() if r.get("kind") == "measured"]
    plan = Plan()
    for path, rec in source:
        dest = record_path(to_results, rec)
        same_slot = [(p, r) for p, r in existing if slot(r) == slot(rec)]
        stale = [(p, r) for p, r in same_slot if p != dest]
        if dest.is_file() and dest.read_bytes() == path.read_bytes():
            status = "unchanged"
        elif dest.is_file():
            status = "replaced"
            plan.removals.append((dest, dest, _why_replaced(on_board.get(dest, {}), rec)))
        else:
            status = "replaced" if stale else "added"
        for p, r in stale:
            plan.removals.append((p, dest, _why_replaced(r, rec)))
        if stale and status == "unchanged":
            status = "replaced"
        plan.copies.append((path, dest, status))
    gone = {old for old, _, _ in plan.removals} | {dest for _, dest, _ in plan.copies}
    submitted: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, rec in source:
        submitted.setdefault(row_key(rec), rec)
    for p, r in existing:
        new = submitted.get(row_key(r))
        if new is not None and p not in gone and (why := other_design(r, new)):
            plan.retired.append((p, why))
    return plan


def _copy(src: Path, dest: Path) -> None:
    data = src.read_bytes()
    atomic_write(dest, lambda p: p.write_bytes(data))


def submit(src: str | Path, to: str | Path = BOARD_DIR, dry_run: bool = False,
           quiet: bool = False) -> Plan:
    """Copy the records of board ``src`` into board ``to`` and re-render ``to``.

    Prints one line per replaced record and a summary (``would`` lines with ``dry_run``, which
    writes nothing). Submitting the same board twice changes nothing the second time.

    Raises:
        UserError: see ``plan_submission``; nothing is written then.
    """
    plan = plan_submission(src, to)
    verb = "would replace" if dry_run else "replaced"
    lines = [f"{verb} {old} ({why})" + ("" if old == new else f" with {new.name}")
             for old, new, why in plan.removals]
    lines += [f"{'would retire' if dry_run else 'retired'} {old} ({why}; its row is "
              f"now the submitted design)" for old, why in plan.retired]
    if dry_run:
        lines += [f"would add {dest}" for _, dest, s in plan.copies if s == "added"]
    changed = any(s != "unchanged" for _, _, s in plan.copies) or bool(plan.retired)
    if not dry_run and changed:
        for source, dest, status in plan.copies:
            if status != "unchanged":
                _copy(source, dest)
        written = {dest for _, dest, _ in plan.copies}
        for old in [o for o, _, _ in plan.removals] + [o for o, _ in plan.retired]:
            if old not in written:
                old.unlink(missing_ok=True)
        from .render import write_board

        write_board(to, html=True)
    counts = (f"{plan.count('added')} added, {plan.count('replaced')} replaced, "
              f"{plan.count('unchanged')} unchanged"
              + (f", {len(plan.retired)} retired" if plan.retired else ""))
    if dry_run:
        lines.append(f"dry run, nothing written: {src} -> {to}: {counts}")
    else:
        board = f"; re-rendered {Path(to) / 'LEADERBOARD.md'}" if changed else ""
        lines.append(f"submitted {src} -> {to}: {counts}{board}")
    if not quiet:
        print("\n".join(lines))
    return plan
