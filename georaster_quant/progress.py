"""Progress bars: one rule for which tqdm to use.

A notebook widget where one can be drawn, text on a terminal, and nothing at all when
progress is off. ``tqdm.auto`` alone warns ("IProgress not found") in a Jupyter kernel
without ipywidgets, even for a disabled bar, so that case falls back to text quietly.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or with ``total=``), or a silent one if not ``enabled``."""
    from tqdm.std import tqdm as text_tqdm

    if not enabled:
        return text_tqdm(iterable, disable=True, **kwargs)
    if importlib.util.find_spec("ipywidgets") is None:
        return text_tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
