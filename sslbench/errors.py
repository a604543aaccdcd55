"""User-facing errors: one line, exit code 2, no traceback unless ``--debug``."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (recipe, path, CLI). Printed as one line; the CLI exits with 2."""


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name (shown after ``prefix``, e.g.
    the dotted path of a config key), or a list of valid names."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (valid: {', '.join(valid)})" if valid else ""
