"""The one interface every image-to-mesh backend implements, and the registry of backends.

A generator turns a batch of images into a list of per-item results in one call, so a
backend can run a single forward pass over the batch. Errors that belong to one image are
returned as that item's error; errors that belong to the whole batch (out of memory) are
raised, so the batch runner can split the batch and retry.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch
    import trimesh


@dataclass(frozen=True)
class GenerationRequest:
    """One image to turn into a mesh.

    `image` is RGBA uint8 of shape (H, W, 4); an alpha channel that is fully opaque means
    "no alpha" and the generator segments the foreground itself. `key` identifies the image
    (the partition key) and, together with `seed`, fixes any randomness for this item so
    its mesh does not depend on what else is in the batch.
    """

    key: str
    image: np.ndarray
    resolution: int = 128
    seed: int = 0

    def item_seed(self) -> int:
        """A 63-bit seed derived from the job's seed and the image's identity."""
        digest = hashlib.sha256(f"{self.seed}:{self.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass
class GenerationResult:
    """The outcome for one request: a mesh, or a one-line error naming the reason.

    `metrics["quality"]` is `{"verdict": "ok" | "suspect", "reasons": [...]}` and
    `metrics["foreground_fraction"]` the mask's share of the image (lib/quality.py); a
    suspect mesh is still a mesh. `mask` is the final foreground mask (bool, at the
    background remover's working size), so a UI can show it over the input. `retryable`
    marks an error that may not happen again (out of memory at batch size one); any other
    error is the image's own and repeats.
    """

    key: str
    mesh: trimesh.Trimesh | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.mesh is not None and self.error is None


class Generator(Protocol):
    """A backend. `generate` runs one batch; all requests share one `batch_key`."""

    name: str
    version: str
    device: torch.device

    def batch_key(self, request: GenerationRequest) -> Any:
        """Requests with equal keys can share one forward pass (e.g. same resolution)."""
        ...

    def item_memory_bytes(self, request: GenerationRequest) -> int:
        """Rough peak working memory one item adds to a batch, for the auto batch size."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One batched pass. Raises the device's out-of-memory error for the whole batch."""
        ...


GeneratorFactory = Callable[..., Generator]
_REGISTRY: dict[str, GeneratorFactory] = {}
_BUILTIN_BACKENDS = {
    "inflate": "orfeas_pipelines.lib.generation.inflate",
    "hunyuan3d": "orfeas_pipelines.lib.generation.hunyuan3d",
}


def register_generator(name: str, factory: GeneratorFactory) -> None:
    """Make a backend available by name; factories take `device=` plus backend options."""
    _REGISTRY[name] = factory


def available_generators() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_BACKENDS))


def create_generator(name: str, device: str | torch.device = "auto", **options: Any) -> Generator:
    """Build the named backend on the resolved device; unknown names fail with the choices."""
    if name not in _REGISTRY and name in _BUILTIN_BACKENDS:
        importlib.import_module(_BUILTIN_BACKENDS[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown generator backend {name!r}: choose one of {available_generators()}")
    return _REGISTRY[name](device=resolve_device(device), **options)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` means CUDA when present, CPU otherwise; asking for CUDA without one is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)
