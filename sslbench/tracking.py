"""Metric tracking: JSON lines in the run directory (always) and Weights & Biases (optional).

W&B runs offline when no API key is configured (``WANDB_API_KEY`` unset and no ``wandb login``),
so nothing ever needs the network; ``sslbench wandb-sync`` / ``wandb sync`` uploads later.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from .distributed import is_main
from .utils import atomic_write_text


def _wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    """Rank-0 logger: ``log(metrics, step)`` to ``metrics.jsonl`` and to W&B when enabled."""

    def __init__(self, jsonl: Optional[Path], wandb_cfg: Any = None, run_name: str = "",
                 job_type: str = "pretrain", config: Optional[dict] = None,
                 wandb_dir: Optional[Path] = None, tags: Optional[list[str]] = None,
                 id_file: Optional[Path] = None) -> None:
        """``id_file`` (the run directory's ``wandb_id``) keeps the W&B run id: a resumed run,
        and the evaluation results written into its summary later, continue the same W&B run
        instead of starting a namesake."""
        self.enabled = is_main()
        self.jsonl = jsonl if self.enabled else None
        self.run = None
        if self.enabled and wandb_cfg is not None and wandb_cfg.wandb:
            import wandb

            d = Path(wandb_cfg.dir or wandb_dir or ".")
            d.mkdir(parents=True, exist_ok=True)
            run_id = None
            if id_file is not None:
                if id_file.is_file():
                    run_id = id_file.read_text().strip()
                else:
                    alphabet = string.ascii_lowercase + string.digits  # W&B's id format
                    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
                    atomic_write_text(id_file, run_id + "\n")
            self.run = wandb.init(
                id=run_id, resume="allow" if run_id else None,
                project=wandb_cfg.project, entity=wandb_cfg.entity,
                # dashboards compare methods per group: the suite name, else the dataset
                group=wandb_cfg.group or (config or {}).get("dataset"),
                job_type=job_type, name=run_name, dir=str(d), config=config or {},
                mode=_wandb_mode(), tags=tags, reinit="finish_previous",
                settings=wandb.Settings(quiet=True, console="off", silent=True),
            )

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if not self.enabled:
            return
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in metrics.items():
                self.run.summary[k] = v

    def log_artifact(self, paths: str | Path | list[Path], name: str, type: str,
                     metadata: Optional[dict[str, Any]] = None) -> Optional[str]:
        """Log file(s) as one W&B artifact (offline too: it travels with ``wandb sync``).
        Returns the artifact name used, or None when W&B is off."""
        if self.run is None:
            return None
        import wandb

        art = wandb.Artifact(artifact_name(name), type=type, metadata=metadata or {})
        for path in (paths if isinstance(paths, list) else [paths]):
            art.add_file(str(path))
        self.run.log_artifact(art)
        return art.name

    def use_artifact(self, name: str, type: str) -> bool:
        """Declare ``name:latest`` an input of this run (lineage). W&B cannot resolve artifacts
        offline, so offline runs keep the link only as the ``pretrain_run`` config entry."""
        if self.run is None or self.run.settings.mode == "offline" or \
                getattr(self.run, "offline", False):
            return False
        try:
            self.run.use_artifact(f"{artifact_name(name)}:latest", type=type)
            return True
        except Exception as e:  # noqa: BLE001 - lineage is best effort, results are not
            print(f"note: W&B lineage to {name} not recorded ({e})", file=sys.stderr)
            return False

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


# points a record keeps of the training loss curve (enough for a plot; records stay small)
LOSS_CURVE_POINTS = 64


def loss_curve(metrics_jsonl: str | Path, key: str = "train/loss",
               points: int = LOSS_CURVE_POINTS) -> list[list[float]] | None:
    """``[[step, value], ...]`` of ``key`` in a run's ``metrics.jsonl``, thinned to at most
    ``points`` evenly spaced entries (the first and last kept); None when the file or the key
    is missing. A resumed run's file holds each step once (the engine truncates it at the
    resume step), so the curve is the run's own."""
    try:
        lines = Path(metrics_jsonl).read_text().splitlines()
    except OSError:
        return None
    curve = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(entry.get(key), (int, float)) and isinstance(entry.get("step"), int):
            curve.append([entry["step"], float(entry[key])])
    if not curve:
        return None
    if len(curve) > points:
        n = len(curve) - 1
        curve = [curve[round(i * n / (points - 1))] for i in range(points)]
    return curve


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:128] or "artifact"


def offline_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Offline W&B run directories (``offline-run-*`` holding a ``run-*.wandb`` log) under
    ``paths``, oldest first."""
    found: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            continue
        candidates = [root] if root.name.startswith("offline-run-") else \
            root.rglob("offline-run-*")
        for d in candidates:
            if d.is_dir() and any(d.glob("run-*.wandb")):
                found.add(d)
    return sorted(found, key=lambda d: d.name)


def wandb_sync(paths: Iterable[str | Path], dry_run: bool = False, quiet: bool = False) -> int:
    """Upload offline runs with ``wandb sync`` (needs ``wandb login`` or ``WANDB_API_KEY``)."""
    paths = list(paths)
    runs = offline_runs(paths)
    if not runs:
        if not quiet:
            print(f"no offline W&B runs under {', '.join(map(str, paths))}")
        return 0
    if dry_run:
        for d in runs:
            print(d)
        if not quiet:
            print(f"{len(runs)} offline run(s); upload them with: sslbench wandb-sync "
                  f"{' '.join(map(str, paths))}")
        return 0
    return subprocess.call([sys.executable, "-m", "wandb", "sync", *map(str, runs)])
