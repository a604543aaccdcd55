"""Resumable checkpoints: model, optimizer, scaler, step, RNG states — written atomically and
loaded with ``weights_only=True``."""
from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .utils import atomic_write

REQUIRED_KEYS = ("method", "optimizer", "scaler", "step", "rng", "wall_time_s", "images_seen")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def torch_load(path: str | Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` (pickled code is refused), without
    its warning about the pickle protocol of a foreign file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_reason(e: Exception) -> str:
    """A short, one-line reason why ``torch.load`` / safetensors could not read a file."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        m = re.search(r"unsupported GLOBAL (\S+)", text)
        if m:
            return f"it pickles {m.group(1)}, which weights-only loading refuses"
        return "weights-only loading cannot read it"
    if isinstance(e, EOFError) or not text.strip():
        return "the file ends early" if isinstance(e, EOFError) else type(e).__name__
    line = text.strip().splitlines()[0].split(". ")[0].strip().rstrip(".")
    return line if len(line) <= 100 else line[:97] + "..."


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``). A file that
    cannot be read as one raises a one-line :class:`UserError` (I/O errors stay ``OSError``)."""
    p = Path(path)
    fix = "delete it to restart training from step 0, or restore it from a backup"
    try:
        state = torch_load(p)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle and tensor errors have no common base
        raise UserError(f"{p} is corrupt or not a valid sslbench checkpoint "
                        f"({load_reason(e)}); {fix}") from None
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else None
    if missing is None or missing:
        what = f"missing {', '.join(missing)}" if missing else f"a {type(state).__name__}"
        raise UserError(f"{p} is corrupt or not a valid sslbench checkpoint ({what}); {fix}")
    return state
