"""The sample images bundled with the package, used by the demo and the benchmark."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


def sample_image_paths() -> list[Path]:
    """The bundled sample PNGs, sorted by name."""
    return sorted(SAMPLES_DIR.glob("*.png"))
