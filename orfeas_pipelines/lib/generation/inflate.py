"""The weight-free `inflate` backend: a mesh from the image's silhouette alone.

The object is the union of balls centred on the mask, each as large as fits inside the
mask (its medial balls). So every cross-section is round and the thickness follows the
local width, the silhouette seen by the camera is the mask itself, and a ring stays a
ring. In formulas, with d the distance from a mask pixel to the background and
r = d - 1/2, the half-thickness over pixel x is h with h^2 = max_p (r(p)^2 - |x - p|^2),
and the solid is h(x, y) - |z| >= 0. Both d^2 and h^2 are exact separable min-plus
transforms with a parabola. Vertex colours come from the image at the vertex's (x, y),
so the back shows the front's colours mirrored.

Every image stage (resize onto the grid, mask, distance transforms, height field, colour
planes) runs on one (B, ...) tensor on the generator's device. Marching cubes
(scikit-image, CPU) and the mesh clean-up then run per item, on that item's own volume
h - |z|, so the result does not depend on the batch. The items of a batch are meshed on a
thread pool (much of that work is numpy, which releases the GIL), and that is where a
batch gains on a CPU.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from orfeas_pipelines.lib.batching import usable_cpus
from orfeas_pipelines.lib.generation.base import GenerationRequest, GenerationResult, register_generator
from orfeas_pipelines.lib.images import has_meaningful_alpha
from orfeas_pipelines.lib.masks import Foreground, find_foreground, foreground_masks
from orfeas_pipelines.lib.meshes import clean_mesh, normalise_to_frame

if TYPE_CHECKING:
    import torch
    import trimesh

DTYPES = ("auto", "float32", "float64")
MIN_RESOLUTION = 16
MAX_RESOLUTION = 512
GRID_MARGIN = 2
"""Empty voxels kept around the object so marching cubes always closes the surface."""

_FAR = 1.0e12
EDGE_MIN = 0.2
"""The edge is placed at least this far (in pixels) from an inside or outside pixel centre."""
THICK_RADIUS = 1.5
"""A part is thick where a ball of at least this radius (pixels) fits within one pixel of the
edge; elsewhere (limbs one or two pixels wide) the edge never moves inside the hard mask's,
so thin parts do not break into pieces at low resolutions."""


class InflateGenerator:
    """Image to mesh by inflating the silhouette; deterministic and needs no weights."""

    name = "inflate"
    version = "1.0"

    def __init__(
        self,
        device: torch.device,
        dtype: str = "auto",
        face_budget: int | None = None,
        background: str = "auto",
        background_model_path: str | None = None,
    ):
        """`dtype` is `auto` (float32), `float32` or `float64`: distances need more than half precision.

        `background` picks the remover for images without alpha (lib/background.py).
        """
        import torch

        from orfeas_pipelines.lib.background import create_remover

        if face_budget is not None and face_budget < 4:
            raise ValueError(f"face_budget must be at least 4, got {face_budget}")
        if dtype not in DTYPES:
            raise ValueError(f"inflate dtype must be one of {DTYPES}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.face_budget = face_budget
        self.remover = create_remover(background, background_model_path)

    def batch_key(self, request: GenerationRequest) -> int:
        return request.resolution

    def item_memory_bytes(self, request: GenerationRequest) -> int:
        """12 R^3 bytes: measured peak RSS grows ~6.5 R^3 per item at R = 256 (the finished
        mesh plus the volumes of the items being meshed at once) and ~12 R^3 at R = 512."""
        return 12 * request.resolution**3 + 8 * 2**20

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        if not requests:
            return []
        resolution = requests[0].resolution
        if any(request.resolution != resolution for request in requests):
            raise ValueError("one batch must share one resolution")
        if not isinstance(resolution, int) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            reason = f"resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {resolution}"
            return [GenerationResult(key=request.key, error=f"{request.key}: {reason}") for request in requests]

        errors: dict[int, str] = {}
        foregrounds: dict[int, Foreground] = {}
        planes, valid, alpha_items = [], [], []
        for index, request in enumerate(requests):
            problem = _image_problem(request.image)
            request_image = np.zeros((1, 1, 4), dtype=np.uint8)
            if problem:
                errors[index] = f"{request.key}: {problem}"
            else:
                foregrounds[index] = find_foreground(request.image, self.remover)
                if foregrounds[index].found:
                    request_image = foregrounds[index].image
                else:
                    errors[index] = f"{request.key}: {foregrounds[index].not_found_reason()}"
            plane, inside = _onto_grid(request_image, resolution, self.device, self.dtype)
            planes.append(plane)
            valid.append(inside)
            alpha_items.append(has_meaningful_alpha(request_image))
        with torch.no_grad(), _single_threaded_on_cpu(self.device):
            rgba = torch.stack(planes)
            masks = foreground_masks(rgba, torch.stack(valid))
            half_thickness = _half_thickness(masks, self.dtype, _coverage(rgba, masks, alpha_items))
            weight = masks.to(self.dtype)[:, None]
            colour = _edge_safe_colours(rgba[:, :3] / rgba[:, 3:].clamp(min=1e-6), masks) * weight
            colour_planes = torch.cat([colour, weight], dim=1).cpu().numpy()
        height_maps = half_thickness.cpu().numpy()
        mask_maps = masks.cpu().numpy()

        def finish(index: int) -> GenerationResult:
            key = requests[index].key
            if index in errors:
                mask = foregrounds[index].mask if index in foregrounds else None
                return GenerationResult(key=key, error=errors[index], mask=mask)
            foreground = foregrounds[index]
            if not mask_maps[index].any():
                error = f"{key}: {foreground.not_found_reason()} (the object vanished at resolution {resolution})"
                return GenerationResult(key=key, error=error, mask=foreground.mask)
            try:
                mesh = _surface(height_maps[index], mask_maps[index], colour_planes[index], self.face_budget)
            except ValueError as error:
                return GenerationResult(key=key, error=f"{key}: no mesh could be made ({error})", mask=foreground.mask)
            metrics = {"resolution": resolution, **foreground.metrics()}
            return GenerationResult(key=key, mesh=mesh, metrics=metrics, mask=foreground.mask)

        if len(requests) == 1:
            return [finish(0)]
        with ThreadPoolExecutor(max_workers=min(len(requests), usable_cpus())) as pool:
            return list(pool.map(finish, range(len(requests))))


@contextmanager
def _single_threaded_on_cpu(device: torch.device) -> Iterator[None]:
    """One torch thread for the image stages on a CPU; the batch's items are the parallelism.

    These ops are small and memory-bound, so extra intra-op threads gain little, and on a
    busy machine every op waits at a barrier for a descheduled thread: measured 3-10x
    slower batches while another process kept both cores busy.
    """
    import torch

    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _image_problem(image: object) -> str | None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
        return f"image must be RGBA uint8 of shape (H, W, 4), got {getattr(image, 'shape', type(image).__name__)}"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "image has no pixels"
    return None


def _onto_grid(image: np.ndarray, resolution: int, device: torch.device, dtype: torch.dtype):
    """The image scaled to fit the grid inside its margin, centred: (4, R, R) plane, (R, R) valid.

    Colour is resized premultiplied by alpha so transparent pixels do not bleed into the
    edges; the padding is transparent (the alpha holds the decided object).
    """
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    inner = resolution - 2 * GRID_MARGIN
    scale = inner / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    pixels = torch.tensor(image, device=device).permute(2, 0, 1)[None].to(dtype) / 255.0
    pixels = torch.cat([pixels[:, :3] * pixels[:, 3:], pixels[:, 3:]], dim=1)
    resized = F.interpolate(pixels, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
    resized = resized.clamp(0.0, 1.0)
    top, left = (resolution - new_height) // 2, (resolution - new_width) // 2
    padding = (left, resolution - new_width - left, top, resolution - new_height - top)
    plane = F.pad(resized, padding)
    valid = torch.zeros((resolution, resolution), dtype=torch.bool, device=device)
    valid[top : top + new_height, left : left + new_width] = True
    return plane[0], valid


def _edge_safe_colours(rgb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Colours (B, 3, R, R) where each pixel on the object's outline takes the mean colour of
    its inner neighbours, so the silhouette is not tinted by background blended into it."""
    import torch
    import torch.nn.functional as F

    outside = (~masks).to(rgb.dtype)[:, None]
    interior = (F.max_pool2d(outside, 3, stride=1, padding=1) == 0).to(rgb.dtype)
    inner_weight = F.avg_pool2d(interior, 3, stride=1, padding=1)
    inner_colour = F.avg_pool2d(rgb * interior, 3, stride=1, padding=1) / inner_weight.clamp(min=1e-6)
    outline = masks[:, None] & (interior == 0) & (inner_weight > 0)
    return torch.where(outline, inner_colour, rgb)


def _coverage(rgba: torch.Tensor, masks: torch.Tensor, alpha_items: list[bool]) -> torch.Tensor:
    """How much of each grid pixel the object covers (B, R, R): the resized alpha where the
    image has a meaningful one (antialiased edges give sub-pixel positions), else the mask."""
    import torch

    has_alpha = torch.tensor(alpha_items, device=masks.device)[:, None, None]
    return torch.where(has_alpha, rgba[:, 3], masks.to(rgba.dtype))


def _half_thickness(masks: torch.Tensor, dtype: torch.dtype, coverage: torch.Tensor) -> torch.Tensor:
    """Half-thickness (B, R, R) of the union of medial balls over the mask; negative outside.

    A medial ball reaches halfway to the nearest background pixel (r = d - 1/2). Outside,
    each pixel next to the object takes a negative value chosen so that linear interpolation
    from its inside neighbours crosses zero where the edge lies: for a straight edge between
    an inside pixel i and an outside pixel o, at c_i + c_o - 1/2 pixels from i, where c is
    the pixel's coverage (1/2 for a hard mask, where the two pixels meet). Thin parts keep
    at least the hard mask's 1/2.
    """
    import torch
    import torch.nn.functional as F

    far = torch.tensor(_FAR, dtype=dtype, device=masks.device)
    zero = torch.zeros((), dtype=dtype, device=masks.device)
    depth = torch.sqrt(_min_plus_parabola_2d(torch.where(masks, far, zero)))
    radius = torch.where(masks, depth - 0.5, zero)
    reach = math.ceil(float(radius.max())) if bool(masks.any()) else 0
    height_squared = -_min_plus_parabola_2d(torch.where(masks, -radius * radius, far), reach)
    height = torch.where(masks, torch.sqrt(height_squared.clamp(min=0.0)), zero)
    heights, coverages = _four_neighbours(height), _four_neighbours(coverage.to(dtype))
    local_radius = F.max_pool2d(radius[:, None], 3, stride=1, padding=1)[:, 0]
    nearest = torch.where(_four_neighbours(local_radius) >= THICK_RADIUS, EDGE_MIN, 0.5)
    edge = torch.maximum(coverages + coverage.to(dtype)[None] - 0.5, nearest).clamp(max=1.0 - EDGE_MIN)
    depth_outside = (heights * (1.0 - edge) / edge).amax(dim=0)
    return torch.where(masks, height, -torch.where(depth_outside > 0, depth_outside, torch.full_like(height, 0.5)))


def _four_neighbours(plane: torch.Tensor) -> torch.Tensor:
    """(4, B, R, R): each pixel's up, down, left and right neighbour (zero past the border)."""
    import torch
    import torch.nn.functional as F

    padded = F.pad(plane, (1, 1, 1, 1))
    return torch.stack([padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]])


def _min_plus_parabola_2d(values: torch.Tensor, reach: int | None = None) -> torch.Tensor:
    """out(x) = min_p values(p) + |x - p|^2 over the last two dims (separable).

    Exact for every x whose best p lies within `reach` pixels along each axis; with no
    reach, offsets grow until no larger one can lower any finite value.
    """
    return _min_plus_parabola(_min_plus_parabola(values, -2, reach), -1, reach)


def _min_plus_parabola(values: torch.Tensor, dim: int, reach: int | None) -> torch.Tensor:
    """out[i] = min over offsets o of values[i + o] + o^2 along `dim`, one offset at a time."""
    import torch

    n = values.shape[dim]
    last = n - 1 if reach is None else min(reach, n - 1)
    out = values.clone()
    for offset in range(1, last + 1):
        if reach is None and offset * offset > float(out.max()):
            break
        penalty = float(offset * offset)
        ahead, behind = out.narrow(dim, offset, n - offset), out.narrow(dim, 0, n - offset)
        torch.minimum(ahead, values.narrow(dim, 0, n - offset) + penalty, out=ahead)
        torch.minimum(behind, values.narrow(dim, offset, n - offset) + penalty, out=behind)
    return out


def _surface(
    height: np.ndarray, mask: np.ndarray, colour_planes: np.ndarray, face_budget: int | None
) -> trimesh.Trimesh:
    """Marching cubes of h(x, y) - |z| around the object, in the contract's frame, coloured."""
    import trimesh
    from scipy import ndimage
    from skimage.measure import marching_cubes

    rows, cols = np.nonzero(mask)
    r0, r1 = rows.min() - 1, rows.max() + 2
    c0, c1 = cols.min() - 1, cols.max() + 2
    crop = height[r0:r1, c0:c1]
    top = math.ceil(float(crop.max())) + 1
    z = np.abs(np.arange(-top, top + 1, dtype=crop.dtype))
    volume = crop[None, :, :] - z[:, None, None]
    vertices, faces, _normals, _values = marching_cubes(volume, level=0.0, allow_degenerate=False)
    layer, row, col = vertices[:, 0], vertices[:, 1] + r0, vertices[:, 2] + c0
    positions = np.column_stack([col, -row, layer - top])
    sampled = np.stack([ndimage.map_coordinates(plane, [row, col], order=1, mode="nearest") for plane in colour_planes])
    rgb = sampled[:3] / np.maximum(sampled[3], 1e-6)
    colours = np.clip(np.round(rgb.T * 255), 0, 255).astype(np.uint8)
    mesh = trimesh.Trimesh(
        vertices=positions,
        faces=faces,
        vertex_colors=np.column_stack([colours, np.full(len(colours), 255, np.uint8)]),
        process=False,
    )
    return normalise_to_frame(clean_mesh(mesh, face_budget=face_budget))


register_generator("inflate", InflateGenerator)
