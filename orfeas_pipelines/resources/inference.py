"""The batched mesh-generation resource: one generator per process, batches sized to memory."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from orfeas_pipelines.lib.batching import BatchReport
    from orfeas_pipelines.lib.generation.base import Generator, GenerationRequest, GenerationResult


class InflateSettings(dg.Config):
    """Options of the weight-free `inflate` backend."""

    face_budget: Optional[int] = None


class Hunyuan3DSettings(dg.Config):
    """Options of the Hunyuan3D-2 backend; defaults are the published ones."""

    model_path: Optional[str] = None
    subfolder: str = "hunyuan3d-dit-v2-0"
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    octree_resolution: Optional[int] = None
    num_chunks: int = 8000
    mc_level: float = 0.0
    face_budget: Optional[int] = None

    def options(self) -> dict:
        """Constructor options; the model path falls back to `$ORFEAS_HUNYUAN3D_MODEL_PATH`."""
        options = self.model_dump()
        options["model_path"] = self.model_path or os.environ.get("ORFEAS_HUNYUAN3D_MODEL_PATH")
        return options


class MeshGeneratorResource(dg.ConfigurableResource):
    """Runs a generator backend over many images in memory-sized batches on one device.

    torch and the model load in `setup_for_execution`, once per process, never when the
    definitions load. `batch_size=None` picks the batch from free memory and halves it on
    out-of-memory. `dtype="auto"` is float16 for Hunyuan3D-2 on CUDA and float32 otherwise.
    """

    backend: str = "inflate"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: Optional[int] = None
    memory_fraction: float = 0.5
    background: str = "auto"
    """Background removal for images without alpha: `classic` (weight-free), `rembg` (a learned
    model from `background_model_path`), or `auto` (`rembg` when a model path is set)."""
    background_model_path: Optional[str] = None
    """A local u2net / isnet-general-use / BiRefNet .onnx file (else `$ORFEAS_BACKGROUND_MODEL_PATH`)."""
    inflate: InflateSettings = InflateSettings()
    hunyuan3d: Hunyuan3DSettings = Hunyuan3DSettings()

    _generator: Optional["Generator"] = PrivateAttr(default=None)
    _learned_batch_sizes: dict = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._generator = self.build_generator()

    def build_generator(self) -> "Generator":
        from orfeas_pipelines.lib.generation.base import create_generator

        options = self.hunyuan3d.options() if self.backend == "hunyuan3d" else self.inflate.model_dump()
        background = {"background": self.background, "background_model_path": self.background_model_path}
        return create_generator(self.backend, device=self.device, dtype=self.dtype, **background, **options)

    @property
    def generator(self) -> "Generator":
        if self._generator is None:
            self._generator = self.build_generator()
        return self._generator

    def generate(
        self,
        requests: Sequence["GenerationRequest"],
        batch_size: Optional[int] = None,
        on_batch: Optional[Callable[["BatchReport"], None]] = None,
    ) -> list["GenerationResult"]:
        """Results in request order; `batch_size` overrides the configured one (1 = sequential).

        A batch size that ran out of memory stays halved for the rest of the process, so the
        windows of a long range run do not each pay for the same out-of-memory error.
        """
        from orfeas_pipelines.lib.batching import generate_in_batches

        return generate_in_batches(
            self.generator,
            requests,
            batch_size=batch_size or self.batch_size,
            on_batch=on_batch,
            memory_fraction=self.memory_fraction,
            learned_sizes=self._learned_batch_sizes,
        )
