"""Which turntable frames of a product become synthetic training images.

A product's synthetic images are the frames of one turntable video, frame `i` showing the
package rotated by `i * 360 / frame_count` degrees. Neighbouring frames are nearly identical,
so a run picks a few of them:

- ``first``: ``[0]``, the front view.
- ``key_frames``: about 0, 90, 180 and 270 degrees: ``step = frame_count // 4`` and the
  indices ``[0, step, 2*step, 3*step]``. With fewer than 4 frames the step is 1, which gives
  every frame there is (``[0]``, ``[0, 1]`` or ``[0, 1, 2]``).
- ``interval``: every ``interval``-th frame from 0.
- ``all``: every frame.

The cap ``max_frames`` keeps an evenly spaced subset rather than the first N, so a capped run
still sees the package from all around: position ``(i * n) // max_frames`` of the ``n``
selected indices for ``i`` in ``range(max_frames)``, which always keeps the first index.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

FRAME_MODES = ("first", "key_frames", "interval", "all")

T = TypeVar("T")


def evenly_spaced(items: Sequence[T], limit: int | None) -> list[T]:
    """At most `limit` items spread over the whole sequence, first item kept, order kept."""
    n = len(items)
    if limit is None or n <= limit:
        return list(items)
    if limit <= 0:
        return []
    return [items[(i * n) // limit] for i in range(limit)]


def select_frames(
    mode: str, frame_count: int, interval: int = 5, max_frames: int | None = None
) -> list[int]:
    """Frame indices for one product, ascending and distinct; `[]` when it has no frames."""
    if mode not in FRAME_MODES:
        raise ValueError(f"unknown frame selection {mode!r}: use one of {', '.join(FRAME_MODES)}")
    if interval < 1:
        raise ValueError(f"frame interval must be >= 1, got {interval}")
    if frame_count <= 0:
        return []
    if mode == "first":
        indices = [0]
    elif mode == "key_frames":
        step = max(1, frame_count // 4)
        indices = sorted({i * step for i in range(4) if i * step < frame_count})
    elif mode == "interval":
        indices = list(range(0, frame_count, interval))
    else:
        indices = list(range(frame_count))
    return evenly_spaced(indices, max_frames)
