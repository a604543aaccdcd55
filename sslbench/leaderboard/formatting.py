"""Text shared by the board's renderers and plots: HTML escaping and number formats."""
from __future__ import annotations

import html
from typing import Any

from .aggregation import CLAIM_DELTA

# the mark a paired difference gets when its 95% interval separates it from 0
VERDICT_MARKS = {"beats": "✓", "below": "✗"}


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included) for text or attribute context."""
    return html.escape(str(value), quote=True)


def short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fraction_text(fraction: float) -> str:
    """A label fraction in percent: ``0.1`` -> ``10%``."""
    return f"{100 * fraction:g}%"


def seconds(value: float | None) -> str:
    """A duration in s, min or h; ``–`` when unknown."""
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def ci_text(summary: dict[str, Any]) -> str:
    """A metric summary in percent: ``mean ± ci95`` (the bare mean for a single seed)."""
    mean = f"{100 * summary['mean']:.1f}"
    return mean if summary["ci95"] is None else f"{mean} ± {100 * summary['ci95']:.1f}"


def points(fraction: float) -> str:
    """A fraction in percentage points: ``0.05`` -> ``5``."""
    return f"{100 * fraction:g}"


def diff_text(diff: dict[str, Any]) -> str:
    """A difference of fractions in signed points: ``+12.3 ± 4.5`` (the 95% half-width), the
    bare signed mean without an interval."""
    mean = f"{100 * diff['mean']:+.1f}"
    return mean if diff["ci95"] is None else f"{mean} ± {100 * diff['ci95']:.1f}"


def pairs_text(n: int) -> str:
    """``1 pair``, ``3 pairs``: the (seed, eval seed) pairs a paired difference is over."""
    return f"{n} pair{'' if n == 1 else 's'}"


def paired_legend() -> str:
    """The three sentences that explain the paired columns, as plain text (the Markdown board,
    the HTML page and the README use the same words)."""
    delta = points(CLAIM_DELTA)
    return (
        "Δ vs random is the mean, over the (seed, eval seed) pairs both rows have, of the "
        "row's top-1 minus that of the random-init baseline with the same backbone, dataset, "
        "protocol and settings (each seed gives both the same initialisation, images and "
        "validation split), in points ± the 95% Student-t half-width of those differences; "
        "✓ marks an interval above 0, ✗ one below 0, and no mark a tie or fewer than two "
        "pairs. MDD is the smallest difference this paired comparison detects with power 0.8 "
        "at two-sided α = 0.05 given the current pairs, (t(0.975, n−1) + t(0.80, n−1)) · s / √n "
        "with s the standard deviation of the n paired differences, and Seeds for "
        f"{delta} pts is the number of pairs that would bring it down to {delta} points at "
        "that s. ≈ marks a row whose paired 95% interval of the difference to its column's "
        "best row (Δ vs best) contains 0; a row that shares fewer than two pairs with the best "
        "falls back to overlapping unpaired 95% intervals and is shown as unpaired."
    )


# SI prefixes of a FLOP count, largest first
_SI_PREFIXES = ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"),
                (1e6, "M"), (1e3, "k"))


def flops(value: float | None) -> str:
    """A FLOP count with an SI prefix and three significant digits: ``1.234e14`` ->
    ``123 TFLOP``, ``2e9`` -> ``2 GFLOP``; ``–`` when unknown."""
    if value is None:
        return "–"
    for scale, prefix in _SI_PREFIXES:
        if abs(value) >= 0.9995 * scale:  # 999.96 T rounds to 1 P, not to "1e+03 T"
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def eval_sets_text(sets: dict[str, Any]) -> str:
    """Evaluation-set sizes as plain text, the test set first: ``test 900 images / 450 groups,
    ood 300 images / 150 groups`` (``?`` for a size the record lacks)."""
    parts = []
    for name, info in sorted(sets.items(), key=lambda kv: (kv[0] != "test", str(kv[0]))):
        info = info if isinstance(info, dict) else {}
        parts.append(f"{name} {info.get('images', '?')} images / {info.get('groups', '?')} groups")
    return ", ".join(parts)


def se_text(mean_se: dict[str, float]) -> str:
    """Mean standard errors per accuracy in points: ``acc 1.2 pts, ood_acc 2.0 pts``."""
    return ", ".join(f"{metric} {100 * se:.1f} pts" for metric, se in sorted(mean_se.items()))


def cost_legend() -> str:
    """The sentences that explain the pretraining-cost columns and the test-set standard
    error, as plain text (the Markdown board and the HTML page use the same words)."""
    return (
        "Pretrain FLOP is the mean over runs of the model FLOPs of pretraining (forward and "
        "backward pass of every view, counted with torch.utils.flop_counter on one training "
        "step, times the images seen) and FLOP / image the same per source image; unlike the "
        "wall time they do not depend on the machine. – means not recorded (baselines, and "
        "records written before FLOPs were counted). Each accuracy of a record also has a "
        "standard error over its test set (a bootstrap over the set's independent groups, "
        "e.g. all renders of one glyph); it is not part of ±, which is over seeds, and is "
        "never ranked or paired on: its mean per row is in the HTML provenance panel and in "
        "the JSON (mean_se)."
    )
