"""
A fused, forward-only evaluation of an :class:`~dvr_plugin.fields.field.OccupancyTextureField`'s
values, for the field evaluations of the surface search that need no gradient (the march and the
secant steps).

The eager forward pass launches about ``3 + 3 n_blocks + 1`` kernels per evaluation (the Fourier
features, ``fc_in``, per block ``relu``/``fc0``/``relu``/``fc1``/add, ``relu``/``fc_out``, the
sphere term), and at the sizes of the surface search (a few thousand points) the launches, not
the arithmetic, set the time. :func:`fused_decoder_values` computes the value channel
(``field(points, latent).values``: occupancy logits or signed distances, sphere term included,
no colours) in one Triton launch: each program takes tiles of ``block_m`` points, builds the
Fourier features in registers and runs ``fc_in``, the residual blocks (with each block's latent
projection) and the value row of ``fc_out`` with ``tl.dot``, the weights read from the field's
own parameters (global memory / L2). See :mod:`dvr_plugin.accel._fused_decoder_kernel` for the
kernel's layout.

Measured (one H100, ``integration/benchmarks/bench_fused_decoder.py`` and ``bench_core``; see
docs/performance.md): the renderer does not use it. Inside the CUDA graphs the training step
already replays, eager cuBLAS in TF32 is as fast or faster (H = 256: 0.15 against 0.22 ms at 4,096
points, 1.5 against 1.25 ms at 65,536; H = 512: 2 to 2.6x slower fused), and a training step
that marched with it took 26.2 ms against 18.9 ms. It stays here, tested, as the starting point
for a kernel that keeps the weights in shared memory.

Gradients: none. It is meant for ``torch.no_grad()`` code and raises a ValueError when autograd
would need a graph (grad mode on and the points, the codes or a parameter requiring grad).

Precision: inputs and weights are float32; ``precision`` is the ``input_precision`` of
``tl.dot``: ``"ieee"`` (float32 products), ``"tf32x3"`` (three TF32 products, close to
float32 at tensor-core speed) or ``"tf32"`` (one TF32 product, like eager with
``torch.backends.cuda.matmul.allow_tf32``). The tests hold the first two to 1e-4 and TF32 to
2e-2 of the values' scale (``max(1, max |values|)``) on CUDA. Off CUDA the kernel runs only in
the Triton interpreter (``TRITON_INTERPRET=1`` in the environment before Triton is first
imported), where every precision computes in float32 and the values agree with eager to 1e-5
of their scale (about 2e-7 measured).

Frame and units: points in the field's frame (scene units), exactly as the field takes them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..fields.field import OccupancyTextureField

PRECISIONS = ("ieee", "tf32x3", "tf32")
# the architectures the kernel is built for (its loops over blocks and features are unrolled)
HIDDEN_SIZES = (16, 32, 64, 128, 256, 512)
MAX_BLOCKS = 8
MAX_FREQUENCIES = 10
# programs of the persistent grid in the interpreter (enough to exercise the tile loop)
INTERPRETER_PROGRAMS = 2


class FusedDecoderConfig(NamedTuple):
    """
    The launch configuration of the fused kernel; ``None`` members are chosen by
    :func:`default_config`.

    Members:
        block_m: points per tile (16, 32, 64 or 128).
        block_n: output columns per matrix-product tile (a power of two >= 16, <= H).
        block_k: input columns per matrix-product step (a power of two >= 16, <= H).
        num_warps: warps per program (8 for ``block_m >= 64``, else 4).
        num_stages: software-pipelining stages of the matrix-product loops.
        programs_per_sm: programs of the persistent grid per streaming multiprocessor.
    """

    block_m: int | None = None
    block_n: int | None = None
    block_k: int | None = None
    num_warps: int | None = None
    num_stages: int = 2
    programs_per_sm: int = 1


def unsupported_reason(field) -> str | None:
    """
    Why :func:`fused_decoder_values` cannot evaluate ``field``, or ``None`` when it can: an
    :class:`OccupancyTextureField` (whose ``forward`` is not overridden) with H in
    :data:`HIDDEN_SIZES`, at most :data:`MAX_BLOCKS` blocks, at most :data:`MAX_FREQUENCIES`
    Fourier bands and float32 parameters on one device.
    """
    if not isinstance(field, OccupancyTextureField):
        return f"only OccupancyTextureField is fused, got {type(field).__name__}"
    if type(field).forward is not OccupancyTextureField.forward:
        return f"{type(field).__name__} overrides OccupancyTextureField.forward"
    if field.hidden_size not in HIDDEN_SIZES:
        return f"hidden_size must be one of {HIDDEN_SIZES}, got {field.hidden_size}"
    if len(field.blocks) > MAX_BLOCKS:
        return f"at most {MAX_BLOCKS} residual blocks are fused, got {len(field.blocks)}"
    if field.encoding.n_frequencies > MAX_FREQUENCIES:
        return (
            f"at most {MAX_FREQUENCIES} Fourier frequencies are fused, "
            f"got {field.encoding.n_frequencies}"
        )
    parameters = list(field.parameters())
    if any(p.dtype != torch.float32 for p in parameters):
        return "the field's parameters must be float32"
    if len({p.device for p in parameters}) > 1:
        return "the field's parameters must lie on one device"
    if not all(p.is_contiguous() for p in parameters):
        return "the field's parameters must be contiguous"
    return None


def supports_fused_decoder(field) -> bool:
    """Whether :func:`fused_decoder_values` can evaluate ``field`` (see
    :func:`unsupported_reason`)."""
    return unsupported_reason(field) is None


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def multiprocessors(device: torch.device) -> int:
    """The number of streaming multiprocessors of a CUDA ``device``."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(
    hidden_size: int, n_rows: int, *, n_sms: int, config: FusedDecoderConfig | None = None
) -> FusedDecoderConfig:
    """
    ``config`` with its ``None`` members filled in: ``block_n = block_k = min(H, 64)``, the
    largest ``block_m`` of 64, 32, 16 that still gives every one of the ``n_sms``
    multiprocessors a tile of the ``n_rows`` points (16 when none does), and 8 warps for
    ``block_m >= 64``, else 4 (the settings that compile for sm_90 without register spills for
    H = 256 and 512).

    Raises:
        ValueError: for block sizes that are not powers of two in their ranges.
    """
    config = config or FusedDecoderConfig()
    block_m = config.block_m
    if block_m is None:
        block_m = next((m for m in (64, 32) if math.ceil(n_rows / m) >= n_sms), 16)
    block_n = config.block_n or min(hidden_size, 64)
    block_k = config.block_k or min(hidden_size, 64)
    if block_m not in (16, 32, 64, 128):
        raise ValueError(f"block_m must be 16, 32, 64 or 128, got {block_m}.")
    for name, value in (("block_n", block_n), ("block_k", block_k)):
        if not (_power_of_two(value) and 16 <= value <= hidden_size):
            raise ValueError(f"{name} must be a power of two in [16, {hidden_size}], got {value}.")
    num_warps = config.num_warps or (8 if block_m >= 64 else 4)
    for name, value in (
        ("num_warps", num_warps),
        ("num_stages", config.num_stages),
        ("programs_per_sm", config.programs_per_sm),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return config._replace(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps)


def _needs_graph(field, points: torch.Tensor, latent: torch.Tensor | None) -> bool:
    """Whether autograd would record the evaluation (grad mode on and something requires
    grad)."""
    if not torch.is_grad_enabled():
        return False
    if points.requires_grad or (latent is not None and latent.requires_grad):
        return True
    return any(p.requires_grad for p in field.parameters())


def _check_inputs(
    field: OccupancyTextureField, points: torch.Tensor, latent: torch.Tensor | None
) -> torch.Tensor | None:
    """Check the points (and code) against the field; the code the kernel reads (``None``
    without a latent)."""
    if not isinstance(points, torch.Tensor) or points.dim() < 1 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points)
        raise ValueError(f"points must have shape (B, P, 3), got {shape}.")
    if points.dtype != torch.float32:
        raise ValueError(f"points must be float32, got {points.dtype}.")
    device = field.fc_in.weight.device
    if points.device != device:
        raise ValueError(f"points are on {points.device}, the field on {device}.")
    if field.latent_size == 0:
        return None  # the eager field ignores a code it does not use
    if points.dim() != 3:  # one code per batch row
        raise ValueError(f"points must have shape (B, P, 3), got {tuple(points.shape)}.")
    field._check_latent(points, latent)  # the eager field's rule for the code's shape
    if latent.dtype != torch.float32 or latent.device != device:
        raise ValueError(
            f"latent must be float32 on {device}, got {latent.dtype} on {latent.device}."
        )
    return latent.contiguous()


def fused_decoder_values(
    field: OccupancyTextureField,
    points: torch.Tensor,
    latent: torch.Tensor | None = None,
    *,
    precision: str = "ieee",
    config: FusedDecoderConfig | None = None,
) -> torch.Tensor:
    """
    ``field(points, latent).values`` in one Triton launch, without gradients.

    Args:
        field: an :class:`OccupancyTextureField` that :func:`supports_fused_decoder`.
        points: `(B, P, 3)` float32 points on the field's device (any `(..., 3)` without a
            latent), in the field's frame.
        latent: `(B, C)` float32 codes, one per batch element, required when the field has
            ``latent_size = C > 0`` (ignored otherwise, as by the field).
        precision: one of :data:`PRECISIONS` (module docstring).
        config: the launch configuration (default: :func:`default_config`).

    Returns:
        `points.shape[:-1]` float32 values: occupancy logits or signed distances with the
        field's sphere term, as ``field(points, latent).values``.

    Raises:
        ValueError: for a field that is not supported (the reason named), a precision not in
            :data:`PRECISIONS`, points or codes of the wrong shape, dtype or device, a CPU
            tensor outside the Triton interpreter, or a call that autograd would record.
    """
    reason = unsupported_reason(field)
    if reason is not None:
        raise ValueError(f"The fused decoder cannot evaluate this field: {reason}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    latent = _check_inputs(field, points, latent)
    if _needs_graph(field, points, latent):
        raise ValueError(
            "fused_decoder_values computes no gradients: call it under torch.no_grad()."
        )
    from ._fused_decoder_kernel import SPHERE_NONE, SPHERE_OCCUPANCY, SPHERE_SDF, kernel

    jitted, interpreted = kernel()
    if points.device.type != "cuda" and not interpreted:
        raise ValueError(
            f"The fused decoder runs on CUDA tensors, got points on {points.device} (set "
            "TRITON_INTERPRET=1 before Triton is imported to run it in the Triton interpreter)."
        )
    hidden = field.hidden_size
    flat = points.reshape(-1, 3).contiguous()
    n_rows = flat.shape[0]
    values = torch.empty(n_rows, dtype=torch.float32, device=points.device)
    if n_rows == 0:
        return values.reshape(points.shape[:-1])
    n_sms = multiprocessors(points.device) if points.device.type == "cuda" else 1
    config = default_config(hidden, n_rows, n_sms=n_sms, config=config)
    n_tiles = math.ceil(n_rows / config.block_m)
    if interpreted:
        n_programs = min(n_tiles, INTERPRETER_PROGRAMS)
    else:
        n_programs = min(n_tiles, n_sms * config.programs_per_sm)
    scratch = torch.empty(
        n_programs, 3, config.block_m, hidden, dtype=torch.float32, device=points.device
    )

    encoding = field.encoding
    n_freq = encoding.n_frequencies
    bias_in = field.fc_in.bias
    blocks = list(field.blocks)
    if latent is not None:
        projections = list(field.fc_latent)
        latent_size = field.latent_size
        latent_arg = latent
        points_per_code = n_rows // latent.shape[0]
    else:
        projections, latent_size, latent_arg, points_per_code = [], 0, bias_in, 1
    if field.sphere_radius is None:
        sphere, radius = SPHERE_NONE, 0.0
    else:
        sphere = SPHERE_SDF if field.field_type == "sdf" else SPHERE_OCCUPANCY
        radius = float(field.sphere_radius)
    k_in = encoding.out_size
    jitted[(n_programs,)](
        flat,
        values,
        scratch,
        encoding.freqs if n_freq > 0 else bias_in,  # not read without bands
        encoding.progress if encoding.anneal else bias_in,  # not read without annealing
        latent_arg,  # not read without a latent
        field.fc_in.weight,
        bias_in,
        # per-block tuples; a placeholder that is never read stands in for an empty one
        tuple(b.fc0.weight for b in blocks) or (bias_in,),
        tuple(b.fc0.bias for b in blocks) or (bias_in,),
        tuple(b.fc1.weight for b in blocks) or (bias_in,),
        tuple(b.fc1.bias for b in blocks) or (bias_in,),
        tuple(p.weight for p in projections) or (bias_in,),
        tuple(p.bias for p in projections) or (bias_in,),
        field.fc_out.weight,
        field.fc_out.bias,
        n_rows,
        n_tiles,
        points_per_code,
        radius,
        float(field.sphere_sharpness),
        H=hidden,
        K_IN=k_in,
        K_IN_PAD=max(16, 1 << (k_in - 1).bit_length()),
        N_FREQ=n_freq,
        FREQ_DIV=max(n_freq, 1),
        ANNEAL=bool(encoding.anneal and n_freq > 0),
        N_BLOCKS=len(blocks),
        LATENT_SIZE=latent_size,
        SPHERE=sphere.value,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BLOCK_C=min(64, max(16, 1 << (max(latent_size, 1) - 1).bit_length())),
        PRECISION=precision,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return values.reshape(points.shape[:-1])
