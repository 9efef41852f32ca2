"""The per-image quality verdict: is the foreground mask plausibly one object?

A mesh is made whatever the verdict; `suspect` tells the user to look before trusting it.
The thresholds were set on the labelled photo set (docs/QUALITY.md): every busy scene's
junk mask trips at least one of them, and no good product mask does.
"""

from __future__ import annotations

import numpy as np

TINY_FRACTION = 0.03
HUGE_FRACTION = 0.85
MANY_PARTS = 16
"""More separate parts than this is fragments, not an object (a dozen sweets is still fine)."""
BORDER_HUG = 0.35
"""Share of the image's edge pixels covered by the mask above which it hugs the border."""
INVERTED_HOLE_SHARE = 0.12
INVERTED_MIN_HOLES = 2
"""At least this many enclosed holes covering this share of the outline: the "object" is
likely the background around several objects (a lit panel with things on it)."""
LOW_CONFIDENCE = 0.85
"""Colour separation (or a learned model's decisiveness) below this is low confidence."""


def quality_verdict(mask: np.ndarray, confidence: float) -> dict:
    """`{"verdict": "ok" | "suspect", "reasons": [...]}` for a bool mask at working size."""
    from scipy import ndimage

    reasons = []
    fraction = float(mask.mean())
    if fraction < TINY_FRACTION:
        reasons.append(f"tiny foreground ({fraction:.0%} of the image)")
    if fraction > HUGE_FRACTION:
        reasons.append(f"huge foreground ({fraction:.0%} of the image)")
    _labels, parts = ndimage.label(mask, structure=np.ones((3, 3)))
    if parts > MANY_PARTS:
        reasons.append(f"many fragments ({parts} parts)")
    edge = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    if edge.mean() > BORDER_HUG:
        reasons.append(f"foreground hugs the border ({edge.mean():.0%} of the edge)")
    filled = ndimage.binary_fill_holes(mask)
    holes, _ = ndimage.label(filled & ~mask)
    hole_sizes = np.bincount(holes.ravel())[1:]
    sizeable = hole_sizes[hole_sizes >= 0.01 * filled.sum()]
    if len(sizeable) >= INVERTED_MIN_HOLES and sizeable.sum() >= INVERTED_HOLE_SHARE * filled.sum():
        reasons.append(f"figure/ground likely inverted ({len(sizeable)} object-sized holes)")
    if confidence < LOW_CONFIDENCE:
        reasons.append(f"low mask confidence ({confidence:.2f})")
    return {"verdict": "suspect" if reasons else "ok", "reasons": reasons}
