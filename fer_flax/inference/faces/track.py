"""Following faces across video frames by box overlap (IoU).

Each frame's boxes are matched to the live tracks greedily, highest intersection-over-union first,
when the overlap is at least `min_iou`; unmatched boxes start new tracks (ids 1, 2, ...), and a track
not matched for more than `max_missed` processed frames ends. Greedy matching is enough for the few,
slowly moving faces of a video sampled every few frames; it needs no appearance model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fer_flax.inference.faces.detect import Box


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not touch)."""
    ix = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    iy = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


@dataclasses.dataclass
class _Track:
    track_id: int
    box: Box
    missed: int = 0


class IoUTracker:
    """`update(boxes)` once per processed frame returns one track id per box, in order."""

    def __init__(self, *, min_iou: float = 0.3, max_missed: int = 5):
        self.min_iou = min_iou
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, boxes: Sequence[Box]) -> list[int]:
        pairs = sorted(
            ((iou(t.box, b), ti, bi) for ti, t in enumerate(self._tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        ids: list[int | None] = [None] * len(boxes)
        matched_tracks: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in matched_tracks or ids[bi] is not None:
                continue
            matched_tracks.add(ti)
            ids[bi] = self._tracks[ti].track_id
            self._tracks[ti].box, self._tracks[ti].missed = boxes[bi], 0
        for ti, t in enumerate(self._tracks):
            if ti not in matched_tracks:
                t.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for bi, b in enumerate(boxes):
            if ids[bi] is None:
                ids[bi] = self._next_id
                self._tracks.append(_Track(self._next_id, b))
                self._next_id += 1
        return [int(i) for i in ids]
