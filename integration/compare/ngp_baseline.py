"""
An Instant-NGP-style volume baseline: a multi-resolution hash-grid density field with a small
colour network, rendered by emission-absorption volume rendering with empty-space skipping and
trained on the rays DVR trains on (:func:`dvr_plugin.training.trainer.draw_pixel_batch`).

Two back-ends share the field, the losses, the optimiser and the occupancy rule:

- ``"nerfacc"``: nerfacc 0.5's ``OccGridEstimator`` (its CUDA traversal of a binary occupancy
  grid, updated every 16 steps from the field's density) and ``nerfacc.rendering``;
- ``"torch"``: a stand-in in plain PyTorch, for machines where nerfacc cannot be imported, its
  CUDA extension cannot be built, or its kernels cannot run (the CPU): :class:`DensityGrid`
  (the same exponential-moving-average rule) and samples at the same fixed step in its occupied
  cells, composited in a dense `(rays, samples)` layout.

:func:`probe_nerfacc` tells which back-end can run and, when nerfacc cannot, the exception
that stopped it.

The field (:class:`NGPField`). ``features = hash_grid(x)`` (the project's
:class:`~dvr_plugin.fields.hash_grid.HashGridEncoding`), ``h = MLP(features)``
with one hidden layer, density ``sigma = trunc_exp(h_0 - 1)`` and colour
``sigmoid(MLP([h_1.., SH_4(d)]))`` from the other 15 outputs and the view direction's real
spherical harmonics of degree 4 (16 numbers).

Training (:class:`NGPBaselineTrainer`): per step the pixels DVR's trainer would draw (the
config's ``train.images_per_batch``, ``train.rays_per_image`` and ``train.sampling``), the
smooth-L1 loss of the colour composited over the background against the true colour (the
background colour outside the true mask), plus ``mask_weight`` times the binary cross-entropy
of the opacity against the mask; Adam (learning rate 1e-2, betas (0.9, 0.99), eps 1e-15, weight
decay 1e-6 on the networks), 100 warm-up steps, then a decay by 0.33 at 50%, 75% and 90% of
``schedule_steps`` (Instant-NGP's recipe as nerfacc's examples use it).

Geometry (:meth:`NGPBaselineTrainer.mesh_field`): the level set where a voxel of the extraction
grid absorbs half the light, ``sigma* = ln 2 / voxel``, i.e. ``1 - exp(-sigma* voxel) = 0.5``;
the field is exposed as an occupancy field with values ``log sigma - log sigma*`` (positive
inside) for :func:`dvr_plugin.meshing.extract_mesh`.

Frame and units: the normalised object frame of the data (the object inside the unit cube; the
grids and samples span :data:`~dvr_plugin.fields.field.UNIT_CUBE_BOUNDS`); ray lengths ``t`` in
scene units along unit directions; densities in 1 / scene unit; rendered depths are camera
z-depths (as ``MeshRasterizer``'s ``zbuf`` and DVR's renders).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dvr_plugin.data import MultiViewData
from dvr_plugin.engine.config import resolve_device
from dvr_plugin.engine.evaluation import RenderedViews
from dvr_plugin.engine.trainer import seed_everything
from dvr_plugin.fields.field import UNIT_CUBE_BOUNDS, FieldOutput, check_integers, relu_mlp
from dvr_plugin.fields.hash_grid import HashGridEncoding
from dvr_plugin.renderer.rays import intersect_box, ndc_grid, rays_from_cameras
from dvr_plugin.training import FitConfig
from dvr_plugin.training.trainer import draw_pixel_batch, gather_pixel_batch

BACKENDS = ("auto", "nerfacc", "torch")
NERFACC_VERSION = "0.5.3"
ENCODING_SOURCE = "dvr_plugin.fields.hash_grid.HashGridEncoding"

# ---------------------------------------------------------------------------------------------
# The field


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` whose derivative is evaluated at ``min(x, 15)`` (Instant-NGP's density)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=30.0))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """`(...)` -> `(...)`: ``exp(x)`` with the gradient clamped at ``x = 15``."""
    return _TruncExp.apply(x)


def spherical_harmonics(directions: torch.Tensor) -> torch.Tensor:
    """
    Real spherical harmonics of degrees 0-3 (16 values) of unit directions.

    Args:
        directions: `(..., 3)` unit vectors.

    Returns:
        `(..., 16)` the basis functions, degree by degree.
    """
    x, y, z = directions.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            -0.59004358992664352 * y * (3 * xx - yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1 - 5 * zz),
            0.3731763325901154 * z * (5 * zz - 3),
            0.45704579946446572 * x * (1 - 5 * zz),
            1.4453057213202769 * z * (xx - yy),
            -0.59004358992664352 * x * (xx - 3 * yy),
        ],
        dim=-1,
    )


class NGPField(nn.Module):
    """
    An Instant-NGP-style radiance field over the object box (module docstring).

    Args (keyword-only):
        hidden_size: width of the density network's hidden layer and of the colour network's
            two hidden layers.
        geometry_features: outputs of the density network passed to the colour network.
        density_bias: added to the density network's first output before ``trunc_exp``.
        **encoding_options: the keyword arguments of the hash grid,
            :class:`~dvr_plugin.fields.hash_grid.HashGridEncoding` (``n_levels``,
            ``features_per_level``, ``log2_table_size``, ``base_resolution``,
            ``max_resolution``, ``bounds``: the box it spans), with its defaults (Instant-NGP's).
    """

    def __init__(
        self,
        *,
        hidden_size: int = 64,
        geometry_features: int = 15,
        density_bias: float = -1.0,
        **encoding_options: Any,
    ) -> None:
        super().__init__()
        check_integers(1, hidden_size=hidden_size, geometry_features=geometry_features)
        self.encoding = HashGridEncoding(**encoding_options)
        # the implementation that encodes the points, named in the benchmark's report
        self.encoding_source = ENCODING_SOURCE
        size = self.encoding.out_size
        self.density_bias = float(density_bias)
        self.chunk_size = 2**19
        self.density_net = relu_mlp(
            in_size=size, hidden_size=hidden_size, n_layers=1, out_size=1 + geometry_features
        )
        self.colour_net = relu_mlp(
            in_size=geometry_features + 16, hidden_size=hidden_size, n_layers=2, out_size=3
        )

    def log_density(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points: `(..., 3)` points.

        Returns:
            ``log sigma`` `(...)` and the geometry features `(..., G)`.
        """
        flat = points.reshape(-1, 3)
        # chunks bound the encoding's temporaries (autograd keeps only what backward needs)
        parts = [
            self.density_net(self.encoding(flat[start : start + self.chunk_size]))
            for start in range(0, max(flat.shape[0], 1), self.chunk_size)
        ]
        out = torch.cat(parts) if len(parts) != 1 else parts[0]
        out = out.reshape(*points.shape[:-1], out.shape[-1])
        return out[..., 0] + self.density_bias, out[..., 1:]

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` points -> `(...)` densities (1 / scene unit)."""
        return trunc_exp(self.log_density(points)[0])

    def forward(
        self, points: torch.Tensor, directions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points: `(..., 3)` points.
            directions: `(..., 3)` unit viewing directions.

        Returns:
            ``rgb`` `(..., 3)` in [0, 1] and ``sigma`` `(...)`.
        """
        log_sigma, geometry = self.log_density(points)
        rgb = torch.sigmoid(
            self.colour_net(torch.cat([geometry, spherical_harmonics(directions)], dim=-1))
        )
        return rgb, trunc_exp(log_sigma)


def half_absorption_density(length: float) -> float:
    """The density at which a segment of ``length`` (scene units) absorbs half the light:
    ``1 - exp(-sigma length) = 0.5``, i.e. ``sigma = ln 2 / length`` (1 / scene unit)."""
    if not length > 0:
        raise ValueError(f"length must be positive, got {length}.")
    return math.log(2.0) / length


class DensityLevelField(nn.Module):
    """
    An :class:`NGPField`'s density as an occupancy field of DVR's protocol: values
    ``log sigma - log sigma_level`` `(B, P)` (positive inside), no colour; for
    :func:`dvr_plugin.meshing.extract_mesh` at level 0.

    Args (keyword-only):
        field: the density field.
        sigma_level: the density of the level set (1 / scene unit).
    """

    field_type = "occupancy"

    def __init__(self, *, field: NGPField, sigma_level: float) -> None:
        super().__init__()
        if not sigma_level > 0:
            raise ValueError(f"sigma_level must be positive, got {sigma_level}.")
        self.field = field
        self.log_level = math.log(sigma_level)

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None) -> FieldOutput:
        if latent is not None:
            raise ValueError("DensityLevelField takes no latent code.")
        return FieldOutput(values=self.field.log_density(points)[0] - self.log_level, rgb=None)


# ---------------------------------------------------------------------------------------------
# Empty-space skipping and rendering


class DensityGrid(nn.Module):
    """
    A binary occupancy grid over the box, kept as Instant-NGP keeps it: each cell holds an
    exponential moving average (``ema_decay``) of ``sigma * step_size`` at a random point in it
    (every cell during ``warmup_steps``, then a quarter of them at random plus as many occupied
    ones); a cell is occupied when its value exceeds ``min(occ_threshold, mean)``.

    Args (keyword-only):
        resolution: cells per axis.
        bounds: the box.
    """

    def __init__(
        self, *, resolution: int = 128, bounds: Sequence[Sequence[float]] = UNIT_CUBE_BOUNDS
    ) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}.")
        self.resolution = int(resolution)
        box = torch.tensor([list(bounds[0]), list(bounds[1])], dtype=torch.float32)
        self.register_buffer("box", box)
        self.register_buffer("values", torch.zeros(self.resolution**3))
        self.register_buffer("occupied", torch.ones(self.resolution**3, dtype=torch.bool))

    @torch.no_grad()
    def update(
        self,
        step: int,
        density: Callable[[torch.Tensor], torch.Tensor],
        *,
        step_size: float,
        every: int = 16,
        occ_threshold: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        chunk_size: int = 2**18,
    ) -> bool:
        """
        Update the cells on every ``every``-th step (returns whether it did).

        Args:
            density: `(P, 3)` points -> `(P,)` densities.
            step_size: the render step (scene units): a cell's value is ``sigma * step_size``.
        """
        if step % every != 0:
            return False
        n = self.values.numel()
        device = self.values.device
        if step < warmup_steps:
            cells = torch.arange(n, device=device)
        else:
            uniform = torch.randint(n, (n // 4,), device=device)
            busy = torch.nonzero(self.occupied)[:, 0]
            if busy.numel() > n // 4:
                busy = busy[torch.randint(busy.numel(), (n // 4,), device=device)]
            cells = torch.cat([uniform, busy])
        r = self.resolution
        coords = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        low, high = self.box[0], self.box[1]
        for start in range(0, cells.numel(), chunk_size):
            part = coords[start : start + chunk_size]
            points = low + (part + torch.rand_like(part)) / r * (high - low)
            value = density(points) * step_size
            index = cells[start : start + chunk_size]
            self.values[index] = torch.maximum(self.values[index] * ema_decay, value.float())
        threshold = torch.clamp(self.values.mean(), max=occ_threshold)
        self.occupied.copy_(self.values > threshold)
        return True

    def occupied_at(self, points: torch.Tensor) -> torch.Tensor:
        """`(..., 3)` points -> `(...)` bool, the point's cell is occupied (False outside)."""
        low, high = self.box[0], self.box[1]
        r = self.resolution
        cell = ((points - low) / (high - low) * r).floor().long()
        inside = ((cell >= 0) & (cell < r)).all(-1)
        cell = cell.clamp(0, r - 1)
        flat = (cell[..., 0] * r + cell[..., 1]) * r + cell[..., 2]
        return self.occupied[flat] & inside

    @property
    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())


class RayRender(NamedTuple):
    """
    Members:
        colours: `(R, 3)` colour composited over the background.
        opacities: `(R,)` accumulated opacity.
        depths: `(R,)` expected ray length ``sum w t / sum w`` along unit directions (0 where
            the opacity is 0).
        samples: the number of field samples the render evaluated.
    """

    colours: torch.Tensor
    opacities: torch.Tensor
    depths: torch.Tensor
    samples: int


def render_dense(
    field: NGPField,
    grid: DensityGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    *,
    step_size: float,
    background: torch.Tensor,
    stratified: bool,
) -> RayRender:
    """
    Emission-absorption rendering in plain PyTorch (the stand-in for nerfacc): samples every
    ``step_size`` from ``near`` (jittered by up to one step with ``stratified``) while the
    sample's interval ends before ``far``; the field is evaluated at the samples in occupied
    cells only; ``T_i = exp(-sum_{j<i} sigma_j dt)``, ``w_i = T_i (1 - exp(-sigma_i dt))``.

    Args:
        origins, directions: `(R, 3)` rays, unit directions.
        near, far: `(R,)` the segment inside the box (``near = far`` for rays that miss it).
        background: `(3,)` RGB.
    """
    n_rays = origins.shape[0]
    device = origins.device
    span = (far - near).clamp_min(0.0)
    n_samples = max(1, int(math.ceil(float(span.max()) / step_size))) if n_rays else 1
    start = near.clone()
    if stratified:
        start = start + torch.rand_like(start) * step_size
    steps = torch.arange(n_samples, device=device, dtype=origins.dtype)
    t_start = start[:, None] + steps * step_size  # (R, S)
    t_mid = t_start + 0.5 * step_size
    with torch.no_grad():
        points = origins[:, None, :] + t_mid[..., None] * directions[:, None, :]
        keep = (t_start + step_size <= far[:, None]) & grid.occupied_at(points)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    sample_points = origins[rows] + t_mid[rows, cols, None] * directions[rows]
    rgb, sigma = field(sample_points, directions[rows])
    tau = torch.zeros(n_rays, n_samples, device=device, dtype=sigma.dtype)
    tau = tau.index_put((rows, cols), sigma * step_size)
    transmittance = torch.exp(-(torch.cumsum(tau, dim=1) - tau))
    weights = transmittance * (1.0 - torch.exp(-tau))  # (R, S)
    w = weights[rows, cols]
    colours = torch.zeros(n_rays, 3, device=device, dtype=rgb.dtype).index_add(
        0, rows, w[:, None] * rgb
    )
    opacities = weights.sum(1)
    depths = (weights * t_mid).sum(1) / opacities.clamp_min(1e-10)
    depths = torch.where(opacities > 0, depths, torch.zeros_like(depths))
    colours = colours + (1.0 - opacities[:, None]) * background
    return RayRender(colours, opacities, depths, int(rows.numel()))


# ---------------------------------------------------------------------------------------------
# nerfacc


@dataclass
class NerfaccStatus:
    """
    Members:
        available: nerfacc imported, its extension built and a tiny render ran.
        stage: where it stopped (``"device"``, ``"import"``, ``"build"``, ``"run"``) or ``None``.
        error: the exception (type and text; a build's compiler output is kept at its end).
        seconds: the time the probe took (the JIT build on first use).
        version: nerfacc's version when it imported.
    """

    available: bool
    stage: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0
    version: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        """One line for a table."""
        if self.available:
            return f"nerfacc {self.version}"
        first = (self.error or "").strip().splitlines()
        return f"nerfacc stopped at {self.stage}: {first[0][:120] if first else 'unknown'}"


def _error_text(error: BaseException, limit: int = 4000) -> str:
    text = f"{type(error).__name__}: {error}"
    if len(text) > limit:  # a compiler log: its end names the failure
        text = text[:300] + "\n...\n" + text[-(limit - 300) :]
    return text


def probe_nerfacc(device: torch.device | str) -> NerfaccStatus:
    """
    Import nerfacc, build (just in time, on first use) and load its CUDA extension, and run a
    tiny ``OccGridEstimator.sampling`` + ``nerfacc.rendering`` on ``device``.

    Returns:
        :class:`NerfaccStatus` (never raises for nerfacc's failures).
    """
    device = torch.device(device)
    start = time.perf_counter()

    def stopped(stage: str, error: BaseException | str, version=None) -> NerfaccStatus:
        text = error if isinstance(error, str) else _error_text(error)
        return NerfaccStatus(False, stage, text, time.perf_counter() - start, version)

    if device.type != "cuda":
        return stopped(
            "device",
            f"nerfacc's estimator and renderer run CUDA kernels only; on {device.type} the "
            "PyTorch stand-in runs",
        )
    try:
        import nerfacc
    except Exception as error:
        return stopped("import", error)
    version = getattr(nerfacc, "__version__", None)
    try:
        from nerfacc.cuda import _backend

        if getattr(_backend, "_C", None) is None:
            return stopped(
                "build",
                "no CUDA toolkit (nvcc) found: nerfacc's extension was not built",
                version,
            )
    except Exception as error:
        return stopped("build", error, version)
    try:
        estimator = nerfacc.OccGridEstimator(
            roi_aabb=[-0.5, -0.5, -0.5, 0.5, 0.5, 0.5], resolution=8
        ).to(device)
        estimator.binaries.fill_(True)
        origins = torch.tensor([[0.0, 0.0, -1.0]], device=device)
        directions = torch.tensor([[0.0, 0.0, 1.0]], device=device)
        ray_indices, t_starts, t_ends = estimator.sampling(
            origins, directions, render_step_size=0.05
        )
        sigmas = torch.ones(t_starts.shape[0], device=device, requires_grad=True)

        def rgb_sigma(t0: torch.Tensor, t1: torch.Tensor, ray: torch.Tensor):
            return torch.ones(t0.shape[0], 3, device=device), sigmas

        colours, opacities, _, _ = nerfacc.rendering(
            t_starts, t_ends, ray_indices, n_rays=1, rgb_sigma_fn=rgb_sigma
        )
        opacities.sum().backward()
        torch.cuda.synchronize(device)
        if t_starts.shape[0] == 0 or not 0.0 < float(opacities) <= 1.0:
            return stopped("run", f"unexpected smoke-test render (opacity {float(opacities)})")
    except Exception as error:
        return stopped("run", error, version)
    return NerfaccStatus(True, None, None, time.perf_counter() - start, version)


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclass
class NGPSettings:
    """
    Sizes and rates of the baseline (defaults: Instant-NGP's, as in nerfacc's examples; the
    render step is 1024 steps across the box's diagonal).

    Members:
        n_levels, features_per_level, log2_table_size, base_resolution, max_resolution,
            hidden_size: the field.
        grid_resolution: occupancy cells per axis.
        render_step: sample spacing (scene units); 0 = ``diagonal / 1024``.
        alpha_threshold: nerfacc's ``alpha_thre`` (samples below it are skipped).
        lr: Adam's learning rate.
        schedule_steps: the step count the learning-rate decay is laid out for.
        mask_weight: weight of the opacity-mask cross-entropy.
    """

    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    hidden_size: int = 64
    grid_resolution: int = 128
    render_step: float = 0.0
    alpha_threshold: float = 0.0
    lr: float = 1e-2
    schedule_steps: int = 20000
    mask_weight: float = 0.1

    @classmethod
    def quick(cls) -> NGPSettings:
        """Toy sizes for a CPU smoke run."""
        return cls(
            n_levels=4,
            log2_table_size=12,
            base_resolution=8,
            max_resolution=32,
            hidden_size=16,
            grid_resolution=16,
            render_step=0.04,
        )


class NGPBaselineTrainer:
    """
    Fits the baseline to training views (module docstring) with DVR's pixel batches.

    Args (keyword-only):
        config: the fit configuration (seed, device, background, ``train.*`` pixel batches).
        train_data: the training views.
        settings: :class:`NGPSettings`.
        backend: ``"nerfacc"``, ``"torch"`` or ``"auto"`` (nerfacc when :func:`probe_nerfacc`
            succeeds on the device).
        nerfacc_status: a probe already run (else ``"auto"`` probes).
    """

    def __init__(
        self,
        *,
        config: FitConfig,
        train_data: MultiViewData,
        settings: Optional[NGPSettings] = None,
        backend: str = "auto",
        nerfacc_status: Optional[NerfaccStatus] = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        self.config = config
        self.settings = settings or NGPSettings()
        self.device = resolve_device(config.device)
        if backend == "auto":
            if nerfacc_status is None:
                nerfacc_status = probe_nerfacc(self.device)
            backend = "nerfacc" if nerfacc_status.available else "torch"
        self.backend = backend
        self.nerfacc_status = nerfacc_status
        self.train_data = train_data.to(self.device)
        seed_everything(config.seed)
        s = self.settings
        self.field = NGPField(
            n_levels=s.n_levels,
            features_per_level=s.features_per_level,
            log2_table_size=s.log2_table_size,
            base_resolution=s.base_resolution,
            max_resolution=s.max_resolution,
            hidden_size=s.hidden_size,
        ).to(self.device)
        box = torch.tensor(UNIT_CUBE_BOUNDS, dtype=torch.float32, device=self.device)
        self.box_min, self.box_max = box[0], box[1]
        diagonal = float((box[1] - box[0]).norm())
        self.step_size = s.render_step if s.render_step > 0 else diagonal / 1024
        self.background = torch.tensor(
            list(config.background), dtype=torch.float32, device=self.device
        ).expand(3)
        if backend == "nerfacc":
            import nerfacc

            self.estimator = nerfacc.OccGridEstimator(
                roi_aabb=box.reshape(-1).tolist(), resolution=s.grid_resolution, levels=1
            ).to(self.device)
        else:
            self.estimator = DensityGrid(resolution=s.grid_resolution).to(self.device)
        encoding = list(self.field.encoding.parameters())
        networks = [p for n, p in self.field.named_parameters() if not n.startswith("encoding.")]
        self.optimizer = torch.optim.Adam(
            [
                {"params": encoding, "weight_decay": 0.0},
                {"params": networks, "weight_decay": 1e-6},
            ],
            lr=s.lr,
            betas=(0.9, 0.99),
            eps=1e-15,
        )
        n = s.schedule_steps
        self.scheduler = torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.LinearLR(
                    self.optimizer, start_factor=0.01, total_iters=100
                ),
                torch.optim.lr_scheduler.MultiStepLR(
                    self.optimizer, milestones=[n // 2, n * 3 // 4, n * 9 // 10], gamma=0.33
                ),
            ]
        )
        self.image_generator = torch.Generator().manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.step = 0
        self.train_seconds = 0.0

    # -----------------------------------------------------------------------------------------

    def _rays(
        self, cameras, xys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Rays through ``xys`` `(B, R, 2)` (NDC) of ``B`` cameras.

        Returns:
            origins, unit directions `(B R, 3)`, near, far `(B R,)` inside the box (equal for
            rays that miss it) and `(B R,)` the length of the camera-z-unit direction (ray
            length / z-depth).
        """
        with torch.no_grad():
            origins, directions = rays_from_cameras(cameras, xys)
            origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
            scale = directions.norm(dim=-1)
            directions = directions / scale[:, None]
            near, far, missed = intersect_box(origins, directions, self.box_min, self.box_max)
            near = torch.where(missed, torch.zeros_like(near), near)
            far = torch.where(missed, near, far)
        # nerfacc's kernels read the rays as dense float32 arrays
        return (
            origins.float().contiguous(),
            directions.float().contiguous(),
            near.float().contiguous(),
            far.float().contiguous(),
            scale,
        )

    def render_rays(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
        *,
        stratified: bool,
    ) -> RayRender:
        """Render `(R, 3)` rays (unit directions) between ``near`` and ``far`` `(R,)`."""
        if self.backend == "torch":
            return render_dense(
                self.field,
                self.estimator,
                origins,
                directions,
                near,
                far,
                step_size=self.step_size,
                background=self.background,
                stratified=stratified,
            )
        import nerfacc

        field = self.field

        def sigma_fn(t0: torch.Tensor, t1: torch.Tensor, ray: torch.Tensor) -> torch.Tensor:
            points = origins[ray] + directions[ray] * (0.5 * (t0 + t1))[:, None]
            return field.density(points)

        def rgb_sigma_fn(t0: torch.Tensor, t1: torch.Tensor, ray: torch.Tensor):
            points = origins[ray] + directions[ray] * (0.5 * (t0 + t1))[:, None]
            return field(points, directions[ray])

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            origins,
            directions,
            sigma_fn=sigma_fn,
            t_min=near,
            t_max=far,
            render_step_size=self.step_size,
            stratified=stratified,
            alpha_thre=self.settings.alpha_threshold,
            early_stop_eps=1e-4,
        )
        colours, opacities, depths, _ = nerfacc.rendering(
            t_starts,
            t_ends,
            ray_indices,
            n_rays=origins.shape[0],
            rgb_sigma_fn=rgb_sigma_fn,
            render_bkgd=self.background,
        )
        opacity = opacities[:, 0]  # nerfacc's depth is already sum w t / sum w
        depth = torch.where(opacity > 0, depths[:, 0], torch.zeros_like(opacity))
        return RayRender(colours, opacity, depth, int(t_starts.shape[0]))

    def _update_grid(self) -> None:
        field = self.field

        def occupancy(points: torch.Tensor) -> torch.Tensor:
            return field.density(points) * self.step_size

        if self.backend == "torch":
            self.estimator.update(self.step, field.density, step_size=self.step_size)
        else:
            self.estimator.update_every_n_steps(
                step=self.step, occ_eval_fn=occupancy, occ_thre=1e-2
            )

    def train_step(self) -> dict[str, float]:
        """
        One optimisation step.

        Returns:
            ``loss``, ``rgb``, ``mask``, ``lr``, ``samples_per_ray`` and ``opacity_agreement``.
        """
        cfg = self.config
        data = self.train_data
        index, masks, sample = draw_pixel_batch(
            data, cfg.train, image_generator=self.image_generator, generator=self.generator
        )
        cameras, gt_rgb, gt_mask, _ = gather_pixel_batch(data, index, masks, sample)
        gt_rgb, gt_mask = gt_rgb.reshape(-1, 3), gt_mask.reshape(-1)
        self.field.train()
        self._update_grid()
        origins, directions, near, far, _ = self._rays(cameras, sample.xys)
        out = self.render_rays(origins, directions, near, far, stratified=True)
        target = torch.where(gt_mask[:, None], gt_rgb, self.background)
        rgb = F.smooth_l1_loss(out.colours, target)
        opacity = out.opacities.clamp(1e-5, 1.0 - 1e-5)
        mask = F.binary_cross_entropy(opacity, gt_mask.float())
        loss = rgb + self.settings.mask_weight * mask
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"The NGP baseline's loss became non-finite at step {self.step}."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        return {
            "loss": float(loss.detach()),
            "rgb": float(rgb.detach()),
            "mask": float(mask.detach()),
            "lr": float(lr),
            "samples_per_ray": out.samples / max(origins.shape[0], 1),
            "opacity_agreement": float(((out.opacities > 0.5) == gt_mask).float().mean()),
        }

    @torch.no_grad()
    def render_views(
        self, cameras, image_size: tuple[int, int], *, chunk_size: int = 16384
    ) -> RenderedViews:
        """
        Render every pixel of every camera (no jitter).

        Returns:
            RenderedViews on the CPU: ``images`` `(N, H, W, 3)`, ``masks`` (the opacity)
            `(N, H, W)`, ``depths`` `(N, H, W)` z-depth where the opacity exceeds 0.5 (else 0),
            ``normals`` zeros `(N, H, W, 3)` (not computed).
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.field.eval()
        height, width = int(image_size[0]), int(image_size[1])
        grid = ndc_grid((height, width), device=self.device).reshape(1, -1, 2)
        images, masks, depths = [], [], []
        for i in range(len(cameras)):
            origins, directions, near, far, scale = self._rays(cameras[[i]], grid)
            parts = []
            for start in range(0, origins.shape[0], chunk_size):
                end = start + chunk_size
                out = self.render_rays(
                    origins[start:end],
                    directions[start:end],
                    near[start:end],
                    far[start:end],
                    stratified=False,
                )
                parts.append((out.colours, out.opacities, out.depths / scale[start:end]))
            colour, opacity, depth = (torch.cat(p) for p in zip(*parts, strict=True))
            depth = torch.where(opacity > 0.5, depth, torch.zeros_like(depth))
            images.append(colour.reshape(1, height, width, 3).cpu())
            masks.append(opacity.reshape(1, height, width).cpu())
            depths.append(depth.reshape(1, height, width).cpu())
        self.field.train()
        images_t = torch.cat(images)
        return RenderedViews(
            images=images_t,
            masks=torch.cat(masks),
            depths=torch.cat(depths),
            normals=torch.zeros_like(images_t),
        )

    def mesh_field(self, resolution: int, bounds: float = 0.55) -> tuple[DensityLevelField, float]:
        """
        The density as an occupancy field whose level 0 is where a voxel of a
        ``resolution``-cell grid over ``[-bounds, bounds]^3`` absorbs half the light.

        Returns:
            the field (in ``eval()`` mode) and ``sigma*`` (1 / scene unit).
        """
        sigma_level = half_absorption_density(2.0 * bounds / resolution)
        self.field.eval()
        return DensityLevelField(field=self.field, sigma_level=sigma_level), sigma_level

    def grid_occupied_fraction(self) -> float:
        """The share of occupied cells of the occupancy grid."""
        if self.backend == "torch":
            return self.estimator.occupied_fraction
        return float(self.estimator.binaries.float().mean())

    def state_dict(self) -> dict[str, Any]:
        """The fitted field and grid, the step and the training time."""
        return {
            "field": self.field.state_dict(),
            "grid": self.estimator.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "backend": self.backend,
            "settings": vars(self.settings),
        }
