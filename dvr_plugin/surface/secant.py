"""
The secant refinement of DVR's root finder: bracketed regula falsi and its full-precision finish.

A bracket is a pair of depths along a ray with the inside value ``s <= 0`` at its outside end
and ``s > 0`` at its inside end (see :mod:`dvr_plugin.surface.query` for the query). Depths are
in the rays' length units (camera z for rays from :mod:`dvr_plugin.renderer.rays`); all tensors are
per ray (`(h,)`) or per bracket end (`(h, 2)`, outside end first). Everything here runs without
autograd; :mod:`dvr_plugin.surface.root_finding` calls it after the march and
:mod:`dvr_plugin.accel.refine_graphs` records it as a CUDA graph.
"""

from __future__ import annotations

import torch

from .precision import reduced_precision, resolve_precision
from .query import InsideQuery


def check_finite_values(values: torch.Tensor, what: str) -> None:
    """A one-line ``ValueError`` counting the NaN / inf entries of ``values`` (any shape)."""
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(
            f"The field returned non-finite values (NaN or inf) at {bad} of {values.numel()} "
            f"{what}."
        )


def evaluate_query(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
    check_finite: bool,
    what: str,
) -> torch.Tensor:
    """``query`` on `(r, k)` lengths, shape-checked; `(r, k)` values in the rays' dtype."""
    values = query(ray_ids, origins, directions, lengths)
    if values.shape != lengths.shape:
        raise ValueError(
            f"The surface query returned shape {tuple(values.shape)}, "
            f"expected {tuple(lengths.shape)}."
        )
    if check_finite:
        check_finite_values(values, what)
    return values.to(lengths.dtype)


def polish_root(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    estimate: torch.Tensor,
    slope: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    check_finite: bool,
) -> torch.Tensor:
    """
    Full-precision finish of a reduced-precision root ``estimate`` (its error is about the
    field's reduced-precision error over its slope): evaluate there, take a Newton step with
    the approximate ``slope`` and return the secant through the two full-precision points,
    kept within ``[low, high]``.
    """
    s_a = evaluate_query(
        query, ray_ids, origins, directions, estimate[:, None], check_finite, "ends"
    )[:, 0]
    other = torch.minimum(torch.maximum(estimate - s_a / slope, low), high)
    s_b = evaluate_query(
        query, ray_ids, origins, directions, other[:, None], check_finite, "ends"
    )[:, 0]
    spread = s_b - s_a
    usable = (spread != 0) & (other != estimate)
    root = estimate - s_a * (other - estimate) / torch.where(usable, spread, 1.0)
    root = torch.where(usable, root, estimate)
    return torch.minimum(torch.maximum(root, low), high)


def refine_brackets(
    query: InsideQuery,
    ray_ids: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    d_out: torch.Tensor,
    s_out: torch.Tensor,
    d_in: torch.Tensor,
    s_in: torch.Tensor,
    n_secant_steps: int,
    check_finite: bool,
    precision: str = "float32",
    *,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Illinois regula falsi on brackets with ``s_out <= 0 < s_in``; returns `(h,)` depths.

    The state is kept as `(h, 2)` tensors (column 0 the outside end, column 1 the inside end)
    so that a step is one field evaluation and a dozen small kernels. With a reduced
    ``precision`` the secant steps run in it and the result is finished in full precision by
    :func:`polish_root` (two more evaluations), within ``[low, high]`` (default: the bracket).
    """
    precision = resolve_precision(precision, d_out.device)
    ends = torch.stack([d_out, d_in], dim=1)
    values = torch.stack([s_out, s_in], dim=1).to(ends.dtype)
    weights = values.clone()  # the values, halved at an end kept twice in a row (Illinois)
    last_side = torch.full_like(d_out, -1, dtype=torch.long)
    with reduced_precision(precision, d_out.device):
        for _ in range(n_secant_steps):
            w_out, w_in = weights[:, 0], weights[:, 1]
            spread = w_in - w_out
            valid = spread > 0  # False only for a bracket broken by a reduced-precision march
            secant = (ends[:, 0] * w_in - ends[:, 1] * w_out) / torch.where(valid, spread, 1.0)
            d_mid = torch.where(valid, secant, ends.mean(dim=1))
            s_mid = evaluate_query(
                query, ray_ids, origins, directions, d_mid[:, None], check_finite,
                "secant points",
            )
            side = (s_mid > 0).long()  # (h, 1): the end the new point replaces
            ends.scatter_(1, side, d_mid[:, None])
            values.scatter_(1, side, s_mid)
            weights.mul_(torch.where(side[:, 0] == last_side, 0.5, 1.0)[:, None])
            weights.scatter_(1, side, s_mid)
            last_side = side[:, 0]
    estimate = bracket_estimate(ends, values)
    if precision == "float32":
        return estimate
    slope = bracket_slope(torch.stack([s_out, s_in], dim=1), torch.stack([d_out, d_in], dim=1))
    return polish_root(
        query, ray_ids, origins, directions, estimate, torch.where(slope > 0, slope, 1.0),
        d_out if low is None else low, d_in if high is None else high, check_finite,
    )


def bracket_slope(values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """`(h,)` secant slope of `(h, 2)` brackets; 0 where it is not finite."""
    width = (ends[:, 1] - ends[:, 0]).clamp(min=torch.finfo(ends.dtype).tiny)
    slope = (values[:, 1] - values[:, 0]).to(ends.dtype) / width
    return torch.where(torch.isfinite(slope), slope, 0.0)


def bracket_estimate(ends: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The secant estimate of `(h, 2)` brackets, kept inside; a broken one gives its middle."""
    d_out, d_in = ends[:, 0], ends[:, 1]
    s_out, s_in = values[:, 0], values[:, 1]
    denominator = s_in - s_out
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    estimate = d_out - s_out * (d_in - d_out) / safe
    estimate = torch.minimum(torch.maximum(estimate, d_out), d_in)
    return torch.where(denominator > 0, estimate, 0.5 * (d_in + d_out))
