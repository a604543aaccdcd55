"""Metric tracking: JSON lines in the run directory (always) and Weights & Biases (optional).

W&B runs offline when no API key is configured (``WANDB_API_KEY`` unset and no ``wandb login``),
so nothing ever needs the network; ``sslbench wandb-sync`` / ``wandb sync`` uploads later.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .distributed import is_main


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
                 wandb_dir: Optional[Path] = None, tags: Optional[list[str]] = None) -> None:
        self.enabled = is_main()
        self.jsonl = jsonl if self.enabled else None
        self.run = None
        if self.enabled and wandb_cfg is not None and wandb_cfg.wandb:
            import wandb

            d = Path(wandb_cfg.dir or wandb_dir or ".")
            d.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group,
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

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
