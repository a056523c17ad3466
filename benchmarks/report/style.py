"""What every figure of the report shares: the algorithms' colours, the β markers, the figure itself, and
how its captions count seeds. The report knows no list of algorithms: a label's colour is its place in the
display order (:func:`~.loading._algo_key`), the reference (sft) grey."""

from __future__ import annotations

from typing import Sequence

from .loading import REFERENCE_ALGORITHM, _algo_key

REFERENCE_COLOR = "#4d4d4d"  # sft, the origin of every frontier
BETA_MARKERS = ["o", "s", "^", "D", "v", "P", "p", "<", ">", "h"]


def _palette() -> list[str]:
    """Saturated colours that read on white: matplotlib's tab10 and Dark2 without their greys (the
    reference's colour): 16."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab10 = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    dark2 = [c for i, c in enumerate(colormaps["Dark2"].colors) if i != 7]
    return [to_hex(c) for c in tab10 + dark2]


def algorithm_color(name: str, all_names: Sequence[str] = ()) -> str:
    """An algorithm label's colour: the reference (sft) grey, any other label the palette colour of its
    place in display order among the report's labels ``all_names``, as matplotlib's colour cycle would
    give it (the report knows no list of algorithms: a plugin's label is coloured as any other)."""
    if name == REFERENCE_ALGORITHM:
        return REFERENCE_COLOR
    palette = _palette()
    labels = sorted({*all_names, name} - {REFERENCE_ALGORITHM}, key=_algo_key)
    return palette[labels.index(name) % len(palette)]


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=110)


def seed_phrase(counts: Sequence[int], noun: str = "seed") -> str:
    lo, hi = min(counts), max(counts)
    return f"{hi} {noun}{'s' if hi != 1 else ''}" if lo == hi else f"{lo}-{hi} {noun}s"
