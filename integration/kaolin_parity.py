"""
Kaolin parity: Kaolin's ``chamfer_distance``, ``f_score``, ``point_to_mesh_distance``,
``check_sign`` and ``index_vertices_by_faces`` against this project's native versions
(:mod:`dvr_plugin.metrics.kaolin_compat`, ``backend="native"``) on the same inputs.

Frame and units: every input lives in one world frame; random clouds and triangle soups lie in
``[-1, 1]^3``, the cow mesh in its OBJ frame (about 1.7 units long). Distances are in those
units, squared where the function returns squared distances (``chamfer_distance`` with
``squared=True``, ``sided_distance``, ``point_to_mesh_distance``).

References (``--reference``):

- ``kaolin``: real Kaolin, imported as ``kaolin`` (on the GPU machine a subset built from
  Kaolin's sources by ``integration/gpu_runs/kaolin_parity.sh``);
- ``self``: our native functions on float64 copies of the inputs, standing in for Kaolin, so
  that every case and the report run anywhere, the CPU included.

Each row compares one function on one case: ``max abs diff`` is ``max |ours - reference|`` over
all outputs, ``max rel diff`` is ``max |ours - reference| / max(|reference|, 1e-6 max
|reference|, 1e-9)`` (floors relative to the case's scale and absolute, since the distances of
points on the surface are rounding noise about zero); ``check_sign`` rows give the sign
agreement instead. Notes give the nearest-index agreement (``sided_distance``), the face-index and
distance-type agreement of ``point_to_mesh_distance`` (a differing face whose distance equals
ours within ``16 eps max(diag^2, d)`` is counted as an equivalent tie), the sign agreement of
``check_sign`` (and agreement with the known answer where one exists), or what each side did
when one of them raised. Empty clouds run last: they may raise on either side.

    python -m integration.kaolin_parity --device cuda --reference kaolin --out outputs/kp
    python -m integration.kaolin_parity --device cpu --reference self --out /tmp/kp [--tiny]

Writes ``kaolin_parity.json`` and ``kaolin_parity.md`` to ``--out`` (rewritten after every
row, so a run cut short keeps what it measured) and prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dvr_plugin.data.paths import find_shared_data, missing_data_message
from dvr_plugin.metrics import kaolin_compat as kc
from dvr_plugin.metrics._geometry import closest_points_on_triangles
from dvr_plugin.metrics.pointcloud import nearest_neighbor_distances

COLUMNS = ("function", "case", "max abs diff", "max rel diff", "notes")
# `max rel diff` divides by max(|reference|, REL_FLOOR * max |reference| of the case, ABS_FLOOR)
REL_FLOOR = 1e-6
ABS_FLOOR = 1e-9
Tensors = Tuple[torch.Tensor, ...]


@dataclass
class Row:
    """One comparison: a function on a case, with the differences and what else was seen."""

    function: str
    case: str
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    notes: str = ""
    stats: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The two sides.


class KaolinReference:
    """
    Real Kaolin, called exactly as a user would call it. Both sides offer these methods:

    - ``chamfer_distance(p1 (B, N1, 3), p2 (B, N2, 3), w1, w2, squared)`` -> `(B,)`;
    - ``f_score(gt (B, N1, 3), pred (B, N2, 3), radius, eps)`` -> `(B,)`;
    - ``sided_distance(p1, p2)`` -> squared distances `(B, N1)`, nearest indices `(B, N1)`;
    - ``point_to_mesh_distance(points (B, P, 3), face_vertices (B, F, 3, 3))`` -> squared
      distances, face indices and distance types, each `(B, P)`;
      ``point_to_mesh_distance_verts(points, verts (B, V, 3), faces (F, 3))`` the same through
      ``index_vertices_by_faces`` (so that gradients reach `verts`);
    - ``check_sign(verts (B, V, 3), faces (F, 3), points (B, P, 3), hash_resolution)`` ->
      `(B, P)` bool, True inside;
    - ``index_vertices_by_faces(verts (B, V, 3), faces (F, 3))`` -> `(B, F, 3, 3)`.
    """

    name = "kaolin"

    def __init__(self) -> None:
        self.kaolin = importlib.import_module("kaolin")
        self.pc = importlib.import_module("kaolin.metrics.pointcloud")
        self.tm = importlib.import_module("kaolin.metrics.trianglemesh")
        self.mesh = importlib.import_module("kaolin.ops.mesh")

    def commit(self) -> str:
        return str(getattr(self.kaolin, "__commit__", getattr(self.kaolin, "__version__", "?")))

    def chamfer_distance(self, p1, p2, w1, w2, squared):
        return self.pc.chamfer_distance(p1, p2, w1=w1, w2=w2, squared=squared)

    def f_score(self, gt, pred, radius, eps):
        return self.pc.f_score(gt, pred, radius=radius, eps=eps)

    def sided_distance(self, p1, p2):
        return self.pc.sided_distance(p1, p2)

    def point_to_mesh_distance(self, points, face_vertices):
        return self.tm.point_to_mesh_distance(points, face_vertices)

    def point_to_mesh_distance_verts(self, points, verts, faces):
        fv = self.mesh.index_vertices_by_faces(verts, faces)
        return self.tm.point_to_mesh_distance(points, fv)

    def check_sign(self, verts, faces, points, hash_resolution):
        return self.mesh.check_sign(verts, faces, points, hash_resolution=hash_resolution)

    def index_vertices_by_faces(self, verts, faces):
        return self.mesh.index_vertices_by_faces(verts, faces)


class NativeSide:
    """Our native functions; with ``float64=True`` on float64 copies (the ``self`` reference)."""

    def __init__(self, *, float64: bool = False) -> None:
        self.float64 = float64
        self.name = "self (native float64)" if float64 else "native"

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() if self.float64 and x.is_floating_point() else x

    def commit(self) -> str:
        return "n/a (self reference)"

    def chamfer_distance(self, p1, p2, w1, w2, squared):
        p1, p2 = self._in(p1), self._in(p2)
        return kc.kaolin_chamfer_distance(p1, p2, w1, w2, squared, backend="native")

    def f_score(self, gt, pred, radius, eps):
        return kc.kaolin_f_score(self._in(gt), self._in(pred), radius, eps, backend="native")

    def sided_distance(self, p1, p2):
        dist, idx = nearest_neighbor_distances(self._in(p1), self._in(p2))
        return dist**2, idx

    def point_to_mesh_distance(self, points, face_vertices):
        return kc.point_to_mesh_distance(
            self._in(points), self._in(face_vertices), backend="native"
        )

    def point_to_mesh_distance_verts(self, points, verts, faces):
        fv = kc.index_vertices_by_faces(self._in(verts), faces)
        return kc.point_to_mesh_distance(self._in(points), fv, backend="native")

    def check_sign(self, verts, faces, points, hash_resolution):
        return kc.check_sign(
            self._in(verts), faces, self._in(points), hash_resolution, backend="native"
        )

    def index_vertices_by_faces(self, verts, faces):
        return kc.index_vertices_by_faces(self._in(verts), faces)


# ---------------------------------------------------------------------------------------------
# Running one call and comparing outputs.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(fn: Callable[[], Any], device: torch.device) -> Tuple[Any, Optional[str], float]:
    """``(output, error, seconds)``: the output, or ``None`` and the error's first line."""
    _sync(device)
    start = time.perf_counter()
    try:
        out = fn()
        _sync(device)
    except Exception as error:  # Recorded in the table: what each side does matters here.
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"{type(error).__name__}: {message[:160]}", time.perf_counter() - start
    return out, None, time.perf_counter() - start


def _describe(out: Any) -> str:
    """A short account of an output (used when the other side raised)."""
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_describe(o) for o in out) + ")"
    if isinstance(out, torch.Tensor):
        if out.numel() <= 4:
            return f"{out.detach().cpu().tolist()}"
        return f"tensor {tuple(out.shape)} {str(out.dtype).replace('torch.', '')}"
    return repr(out)


def differences(ours: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """``(max abs, max rel)`` difference in float64 (see the module docstring); 0 when empty."""
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(
            f"Output shapes differ: ours {tuple(a.shape)}, reference {tuple(b.shape)}."
        )
    if a.numel() == 0:
        return 0.0, 0.0
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    scale = b.abs().nan_to_num(0.0, 0.0, 0.0)
    floor = max(REL_FLOOR * float(scale.max()), ABS_FLOOR)
    return float(diff.max()), float((diff / scale.clamp_min(floor)).max())


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}%" if x < 1.0 else "100%"


class Runner:
    """Runs the cases, collects rows and rewrites the report after each one."""

    def __init__(self, ref, ours: NativeSide, device: torch.device, out: Optional[Path], meta):
        self.ref, self.ours, self.device, self.out, self.meta = ref, ours, device, out, meta
        self.rows: List[Row] = []

    def compare(
        self,
        function: str,
        case: str,
        call: Call,
        check: Optional[Callable[[Any, Any, Row], None]] = None,
        pick: Optional[Callable[[Any], torch.Tensor]] = lambda out: out,
    ) -> Row:
        """Run ``call`` on both sides, compare ``pick(output)`` and let ``check`` add notes."""
        ref_out, ref_err, ref_s = _call(lambda: call(self.ref), self.device)
        our_out, our_err, our_s = _call(lambda: call(self.ours), self.device)
        row = Row(function, case)
        row.stats.update(ref_ms=1e3 * ref_s, ours_ms=1e3 * our_s)
        if ref_err or our_err:
            row.notes = (
                f"reference: {ref_err or _describe(ref_out)}; ours: {our_err or _describe(our_out)}"
            )
            row.stats.update(ref_error=ref_err, ours_error=our_err)
        else:
            try:
                if pick is not None:
                    row.max_abs, row.max_rel = differences(pick(our_out), pick(ref_out))
                if check is not None:
                    check(our_out, ref_out, row)
            except Exception as error:
                row.notes = f"comparison failed: {type(error).__name__}: {error}"
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.write()
        return row

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        doc = dict(meta=self.meta, columns=list(COLUMNS), rows=[asdict(r) for r in self.rows])
        (self.out / "kaolin_parity.json").write_text(json.dumps(doc, indent=1) + "\n")
        (self.out / "kaolin_parity.md").write_text(format_report(self.meta, self.rows))


# ---------------------------------------------------------------------------------------------
# Report.


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}"


def format_row(row: Row) -> str:
    cells = [row.function, row.case, _fmt(row.max_abs), _fmt(row.max_rel), row.notes]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def format_report(meta: Dict[str, Any], rows: Sequence[Row]) -> str:
    lines = [
        "# Kaolin parity",
        "",
        f"- reference: {meta['reference']} (Kaolin commit {meta['kaolin_commit']})",
        "- ours: dvr_plugin.metrics.kaolin_compat, backend='native'",
        f"- device: {meta['device']} ({meta['card']}); torch {meta['torch']}",
        f"- max rel diff: |ours - reference| / max(|reference|, {REL_FLOOR:g} max |reference| "
        f"of the case, {ABS_FLOOR:g}); check_sign: see the sign agreement",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [format_row(r) for r in rows]
    if rows:
        lines += ["", "## Per function", "", *format_summary(rows)]
    return "\n".join(lines) + "\n"


AGREEMENT_KEYS = ("nearest_idx_agree", "face_equivalent", "type_agree_same_face", "sign_agree")


def format_summary(rows: Sequence[Row]) -> List[str]:
    """
    Per function: the largest differences over its rows, the lowest agreements (face indices
    counted with equivalent ties; distance types where the faces agree; rows without a right
    answer left out) and the number of rows where a side raised.
    """
    lines = [
        "| function | rows | max abs diff | max rel diff | lowest agreement (well-posed rows) "
        "| rows with an error |",
        "|---|---|---|---|---|---|",
    ]
    for function in dict.fromkeys(r.function for r in rows):
        mine = [r for r in rows if r.function == function]
        numeric = [r for r in mine if r.max_abs is not None]
        abs_max = max((r.max_abs for r in numeric), default=None)
        rel_max = max((r.max_rel for r in numeric), default=None)
        lowest = []
        for key in AGREEMENT_KEYS:
            values = [r.stats[key] for r in mine if key in r.stats and not r.stats.get("ill_posed")]
            if values:
                lowest.append(f"{key.replace('_agree', '').replace('_', ' ')} {_pct(min(values))}")
        errors = sum(1 for r in mine if r.stats.get("ref_error") or r.stats.get("ours_error"))
        cells = [function, str(len(mine)), _fmt(abs_max), _fmt(rel_max), ", ".join(lowest)]
        lines.append("| " + " | ".join(cells + [str(errors)]) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# Inputs.


def random_clouds(batch: int, n1: int, n2: int, dtype, device, seed: int) -> Tensors:
    """Two clouds `(batch, n1, 3)`, `(batch, n2, 3)` uniform in ``[-1, 1]^3``."""
    gen = torch.Generator().manual_seed(seed)
    p1 = torch.rand(batch, n1, 3, generator=gen, dtype=torch.float64) * 2 - 1
    p2 = torch.rand(batch, n2, 3, generator=gen, dtype=torch.float64) * 2 - 1
    return p1.to(device, dtype), p2.to(device, dtype)


def load_mesh(tiny: bool) -> Tuple[str, torch.Tensor, torch.Tensor]:
    """``(name, verts (V, 3) float64, faces (F, 3) int64)``: the cow, or an ico-sphere."""
    if tiny:
        from pytorch3d.utils import ico_sphere

        sphere = ico_sphere(1)
        return "ico-sphere 1", sphere.verts_packed().double(), sphere.faces_packed()
    from pytorch3d.io import load_obj

    path = find_shared_data("meshes", "cow.obj")
    if path is None:
        raise SystemExit(missing_data_message("meshes", "cow.obj"))
    verts, faces, _ = load_obj(str(path), load_textures=False)
    return "cow", verts.double(), faces.verts_idx.long()


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """`(F, 3)` unit normals pointing out of the closed surface (orientation from its volume)."""
    v0, v1, v2 = verts[faces].unbind(dim=1)
    normals = torch.cross(v1 - v0, v2 - v0, dim=-1)
    signed_volume = (v0 * torch.cross(v1, v2, dim=-1)).sum() / 6.0
    sign = 1.0 if float(signed_volume) >= 0 else -1.0
    return sign * normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def surface_points(verts: torch.Tensor, faces: torch.Tensor, seed: int) -> Tensors:
    """One random point inside every face, `(F, 3)`, with its face's outward normal `(F, 3)`."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(faces.shape[0], 3, generator=gen, dtype=torch.float64) + 0.05
    w = w / w.sum(dim=1, keepdim=True)
    points = (verts[faces] * w[..., None]).sum(dim=1)
    return points, face_normals(verts, faces)


def box_points(verts: torch.Tensor, n: int, seed: int, pad: float = 0.1) -> torch.Tensor:
    """`(n, 3)` points uniform in the mesh's bounding box grown by ``pad`` of its size."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = verts.amin(dim=0), verts.amax(dim=0)
    size = hi - lo
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    return lo - pad * size + u * (1 + 2 * pad) * size


def triangle_soup(num_faces: int, num_points: int, seed: int) -> Tensors:
    """`(F, 3, 3)` small random triangles in ``[-1, 1]^3`` and `(P, 3)` points around them."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(num_faces, 1, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    tri = corner + 0.3 * (torch.rand(num_faces, 3, 3, generator=gen, dtype=torch.float64) - 0.5)
    points = torch.rand(num_points, 3, generator=gen, dtype=torch.float64) * 2 - 1
    return tri, points


# One triangle and a point in each of the seven regions of Kaolin's numbering (0 face,
# 1..3 vertices, 4 edge 0-1, 5 edge 1-2, 6 edge 2-0), then points exactly on its corners, on
# its edges and inside it.
REGION_TRIANGLE = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
REGION_POINTS = [
    ([0.2, 0.2, 0.5], 0),
    ([-1.0, -1.0, 0.3], 1),
    ([2.0, -0.5, 0.1], 2),
    ([-0.5, 2.0, 0.1], 3),
    ([0.5, -1.0, 0.2], 4),
    ([1.0, 1.0, 0.3], 5),
    ([-1.0, 0.5, 0.1], 6),
]
EXACT_POINTS = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.0]]
EXACT_POINTS += [[0.5, 0.5, 0.0], [0.0, 0.5, 0.0], [0.25, 0.25, 0.0]]


# ---------------------------------------------------------------------------------------------
# Checks that add notes.


def _index_note(ours, ref, row: Row) -> None:
    """Nearest-neighbour index agreement of ``sided_distance``."""
    agree = float((ours[1].cpu() == ref[1].cpu()).double().mean()) if ours[1].numel() else 1.0
    row.stats["nearest_idx_agree"] = agree
    row.notes = f"nearest idx agree {_pct(agree)}"


def _p2m_check(
    points: torch.Tensor, face_vertices: torch.Tensor, expected: Optional[torch.Tensor] = None
) -> Callable[[Any, Any, Row], None]:
    """Face-index and distance-type agreement of `point_to_mesh_distance` for batch item 0."""

    def check(ours, ref, row: Row) -> None:
        o_idx, r_idx = ours[1][0].cpu(), ref[1][0].cpu()
        o_type, r_type = ours[2][0].cpu().long(), ref[2][0].cpu().long()
        if o_idx.numel() == 0:
            row.notes = "empty output on both sides"
            return
        tri = face_vertices[0].detach().double().cpu()
        pts = points[0].detach().double().cpu()

        def dist_to(idx):
            t = tri[idx]
            closest, _ = closest_points_on_triangles(pts, t[:, 0], t[:, 1], t[:, 2])
            return ((closest - pts) ** 2).sum(-1)

        d_o, d_r = dist_to(o_idx), dist_to(r_idx)
        diag2 = float(((tri.reshape(-1, 3).amax(0) - tri.reshape(-1, 3).amin(0)) ** 2).sum())
        eps = torch.finfo(points.dtype).eps
        tol = 16 * eps * torch.maximum(torch.full_like(d_o, diag2), d_o)
        same = o_idx == r_idx
        equivalent = same | ((d_o - d_r).abs() <= tol)
        type_all = float((o_type == r_type).double().mean())
        type_same = float((o_type == r_type)[same].double().mean()) if same.any() else 1.0
        row.stats.update(
            face_agree=float(same.double().mean()),
            face_equivalent=float(equivalent.double().mean()),
            type_agree=type_all,
            type_agree_same_face=type_same,
        )
        row.notes = (
            f"face idx agree {_pct(row.stats['face_agree'])} "
            f"(equivalent {_pct(row.stats['face_equivalent'])}); "
            f"type agree {_pct(type_all)} ({_pct(type_same)} where faces agree)"
        )
        if expected is not None:
            for side, types in (("ours", o_type), ("reference", r_type)):
                hit = float((types == expected).double().mean())
                row.stats[f"type_expected_{side}"] = hit
            row.notes += (
                f"; expected types: ours {_pct(row.stats['type_expected_ours'])}, "
                f"reference {_pct(row.stats['type_expected_reference'])}"
            )

    return check


def _outputs_note(ours, ref, row: Row) -> None:
    row.notes = f"reference: {_describe(ref)}; ours: {_describe(ours)}"


def _sign_check(
    truth: Optional[torch.Tensor] = None, *, ill_posed: bool = False
) -> Callable[[Any, Any, Row], None]:
    def check(ours, ref, row: Row) -> None:
        row.stats["ill_posed"] = ill_posed
        o, r = ours.cpu().bool(), ref.cpu().bool()
        agree = float((o == r).double().mean()) if o.numel() else 1.0
        row.stats.update(sign_agree=agree, disagree=int((o != r).sum()), points=o.numel())
        row.notes = f"sign agree {_pct(agree)} ({row.stats['disagree']} of {o.numel()} differ)"
        if truth is not None:
            t = truth.cpu().bool()
            for side, val in (("ours", o), ("reference", r)):
                row.stats[f"truth_{side}"] = float((val == t).double().mean())
            row.notes += (
                f"; right: ours {_pct(row.stats['truth_ours'])}, "
                f"reference {_pct(row.stats['truth_reference'])}"
            )

    return check


# ---------------------------------------------------------------------------------------------
# Cases.


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


class Call:
    """
    ``side.<method>(*args, **kwargs)``; with ``grad`` set, the gradients of ``grad(output)``
    with respect to the floating-point tensor arguments, concatenated into one float64 vector.
    """

    def __init__(
        self,
        method: str,
        *args: Any,
        grad: Optional[Callable[[Any], torch.Tensor]] = None,
        **kwargs: Any,
    ) -> None:
        self.method, self.args, self.kwargs, self.grad = method, args, kwargs, grad

    def __call__(self, side) -> Any:
        fn = getattr(side, self.method)
        if self.grad is None:
            return fn(*self.args, **self.kwargs)
        args = [
            x.detach().clone().requires_grad_(True) if _is_float_tensor(x) else x for x in self.args
        ]
        leaves = [x for x in args if _is_float_tensor(x)]
        grads = torch.autograd.grad(self.grad(fn(*args, **self.kwargs)), leaves)
        return torch.cat([g.reshape(-1).to(torch.float64) for g in grads])


def _first(out: Tensors) -> torch.Tensor:
    return out[0]


def _compare_distances(
    run: Runner,
    case: str,
    points: torch.Tensor,
    face_vertices: torch.Tensor,
    *,
    expected: Optional[torch.Tensor] = None,
    function: str = "point_to_mesh_distance",
) -> Row:
    """
    Compare ``point_to_mesh_distance`` of `(1, P, 3)` points to `(1, F, 3, 3)` face vertices
    (distances, then the face indices and distance types of :func:`_p2m_check`).
    """
    return run.compare(
        function,
        case,
        Call("point_to_mesh_distance", points, face_vertices),
        check=_p2m_check(points, face_vertices, expected=expected),
        pick=_first,
    )


def _sum_of_first(out: Tensors) -> torch.Tensor:
    return out[0].sum()


def cloud_cases(run: Runner, sizes, dtypes, radii, seed: int) -> None:
    dev = run.device
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        for b, n1, n2 in sizes:
            p1, p2 = random_clouds(b, n1, n2, dtype, dev, seed)
            case = f"random ({b}, {n1}) vs ({b}, {n2}) {dname}"
            for w, squared in ((1.0, True), (0.5, False)):
                run.compare(
                    "chamfer_distance",
                    f"{case}, w={w:g}, squared={squared}",
                    Call("chamfer_distance", p1, p2, w, w, squared),
                )
            run.compare(
                "sided_distance (chamfer's per-point term)",
                case,
                Call("sided_distance", p1, p2),
                check=_index_note,
                pick=_first,
            )
            for radius in radii:
                run.compare(
                    "f_score",
                    f"{case}, radius={radius:g}",
                    Call("f_score", p1, p2, radius, 1e-8),
                )
            if n1 * n2 <= 10**8:
                run.compare(
                    "chamfer_distance grad",
                    f"{case}, d/dp1 and d/dp2, squared",
                    Call("chamfer_distance", p1, p2, 1.0, 1.0, True, grad=torch.sum),
                )


def cloud_edge_cases(run: Runner, seed: int) -> None:
    dev = run.device
    one, many = random_clouds(1, 1, 500, torch.float32, dev, seed + 1)
    same, _ = random_clouds(2, 300, 1, torch.float32, dev, seed + 2)
    cases = [
        ("single point vs 500 points float32", one, many),
        ("500 points vs single point float32", many, one),
        ("single point vs single point float32", one, one[:, :1] + 0.25),
        ("identical clouds (2, 300) float32", same, same.clone()),
    ]
    for case, a, b in cases:
        run.compare("chamfer_distance", case, Call("chamfer_distance", a, b, 1.0, 1.0, True))
        run.compare("f_score", f"{case}, radius=0.1", Call("f_score", a, b, 0.1, 1e-8))


def mesh_cases(
    run: Runner, verts64, faces64, mesh_name: str, dtypes, n_box: int, seed: int
) -> None:
    dev = run.device
    faces = faces64.to(dev)
    surface, normals = surface_points(verts64, faces64, seed)
    diag = float((verts64.amax(0) - verts64.amin(0)).norm())
    offset = 2e-3 * diag
    mids = 0.5 * (verts64[faces64] + verts64[faces64].roll(-1, dims=1)).reshape(-1, 3)
    box = box_points(verts64, n_box, seed)
    near = torch.cat([surface + offset * normals, surface - offset * normals])
    near_truth = torch.cat([torch.zeros(len(surface)), torch.ones(len(surface))]).bool()
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        verts = verts64.to(dev, dtype)[None]
        run.compare(
            "index_vertices_by_faces",
            f"{mesh_name} {dname}",
            Call("index_vertices_by_faces", verts, faces),
        )
        fv = kc.index_vertices_by_faces(verts, faces)
        queries = [
            (f"{n_box} points in the padded bounding box", box),
            ("points on the vertices", verts64),
            ("points on the edge midpoints", mids),
            ("points inside the faces (one per face)", surface),
            (f"points {offset:.2g} off the faces, both sides", near),
            ("a single point", box[:1]),
        ]
        for label, pts64 in queries:
            pts = pts64.to(dev, dtype)[None]
            case = f"{mesh_name}, {label}, {dname}"
            _compare_distances(run, case, pts, fv)
        # Gradients reach the mesh vertices through index_vertices_by_faces: with respect to the
        # face vertices they would depend on which of several equally near faces was picked.
        pts = box[: min(n_box, 4096)].to(dev, dtype)[None]
        run.compare(
            "point_to_mesh_distance grad",
            f"{mesh_name}, {pts.shape[1]} box points, d/dpoints and d/dverts, {dname}",
            Call("point_to_mesh_distance_verts", pts, verts, faces, grad=_sum_of_first),
        )
        for label, pts64, truth in [
            (f"{n_box} points in the padded bounding box", box, None),
            (f"points {offset:.2g} off the faces, both sides", near, near_truth),
            ("points on the vertices (no right answer)", verts64, None),
        ]:
            pts = pts64.to(dev, dtype)[None]
            run.compare(
                "check_sign",
                f"{mesh_name}, {label}, {dname}",
                Call("check_sign", verts, faces, pts, 512),
                check=_sign_check(
                    truth[None] if truth is not None else None,
                    ill_posed=pts64 is verts64,
                ),
                pick=None,
            )
    if dev.type == "cuda":
        # Kaolin's CPU paths: check_sign through a 2D triangle hash (resolution 512), and
        # point_to_mesh_distance in plain PyTorch over all (point, face) pairs at once.
        pts = box.float()[None]
        verts_cpu = verts64.float()[None]
        run.compare(
            "check_sign (CPU path)",
            f"{mesh_name}, {n_box} points in the padded bounding box, float32 on CPU",
            Call("check_sign", verts_cpu, faces64, pts, 512),
            check=_sign_check(),
            pick=None,
        )
        pts = pts[:, :2000]
        fv_cpu = kc.index_vertices_by_faces(verts_cpu, faces64)
        _compare_distances(
            run,
            f"{mesh_name}, {pts.shape[1]} points in the padded bounding box, float32 on CPU",
            pts,
            fv_cpu,
            function="point_to_mesh_distance (CPU path)",
        )


def soup_cases(run: Runner, dtypes, num_faces: int, num_points: int, seed: int) -> None:
    dev = run.device
    tri64, pts64 = triangle_soup(num_faces, num_points, seed)
    region_pts = torch.tensor([p for p, _ in REGION_POINTS], dtype=torch.float64)
    region_types = torch.tensor([t for _, t in REGION_POINTS])
    one_tri = torch.tensor(REGION_TRIANGLE, dtype=torch.float64)[None]
    for dtype in dtypes:
        dname = str(dtype).replace("torch.", "")
        fv, pts = tri64.to(dev, dtype)[None], pts64.to(dev, dtype)[None]
        _compare_distances(
            run, f"random soup of {num_faces} triangles, {num_points} points, {dname}", pts, fv
        )
        run.compare(
            "point_to_mesh_distance grad",
            f"random soup, {num_points} points, d/dpoints and d/dface_vertices, {dname}",
            Call("point_to_mesh_distance", pts, fv, grad=_sum_of_first),
        )
        tri1 = one_tri.to(dev, dtype)[None]
        rp = region_pts.to(dev, dtype)[None]
        _compare_distances(
            run,
            f"one triangle, a point in each of the 7 regions, {dname}",
            rp,
            tri1,
            expected=region_types,
        )
        ep = torch.tensor(EXACT_POINTS, dtype=torch.float64).to(dev, dtype)[None]
        _compare_distances(
            run, f"one triangle, points exactly on its corners, edges and face, {dname}", ep, tri1
        )


def empty_cases(run: Runner, verts64, faces64, mesh_name: str, seed: int) -> None:
    """Empty clouds; last, since a side may raise (or worse) on them."""
    dev = run.device
    empty = torch.zeros(1, 0, 3, device=dev)
    _, cloud = random_clouds(1, 1, 100, torch.float32, dev, seed)
    for case, a, b in [
        ("empty (1, 0) vs (1, 100) float32", empty, cloud),
        ("(1, 100) vs empty (1, 0) float32", cloud, empty),
        ("empty vs empty float32", empty, empty),
    ]:
        chamfer = Call("chamfer_distance", a, b, 1.0, 1.0, True)
        run.compare("chamfer_distance", case, chamfer, check=_outputs_note)
        f_score = Call("f_score", a, b, 0.1, 1e-8)
        run.compare("f_score", f"{case}, radius=0.1", f_score, check=_outputs_note)
    verts = verts64.to(dev, torch.float32)[None]
    faces = faces64.to(dev)
    fv = kc.index_vertices_by_faces(verts, faces)
    run.compare(
        "point_to_mesh_distance",
        f"{mesh_name}, no points, float32",
        Call("point_to_mesh_distance", empty, fv),
        check=_outputs_note,
        pick=_first,
    )
    run.compare(
        "point_to_mesh_distance",
        "no faces, 100 points, float32",
        Call("point_to_mesh_distance", cloud, fv[:, :0]),
        check=_outputs_note,
        pick=_first,
    )
    run.compare(
        "check_sign",
        f"{mesh_name}, no points, float32",
        Call("check_sign", verts, faces, empty, 512),
        check=_outputs_note,
        pick=None,
    )


# ---------------------------------------------------------------------------------------------


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--reference",
        choices=("kaolin", "self"),
        default="kaolin",
        help="kaolin: real Kaolin; self: our native functions in float64 (no Kaolin needed)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the json / md report")
    parser.add_argument("--tiny", action="store_true", help="a few small cases (a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kaolin-commit", default=None, help="recorded in the report")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    ref = KaolinReference() if args.reference == "kaolin" else NativeSide(float64=True)
    meta = dict(
        reference=ref.name,
        kaolin_commit=args.kaolin_commit or ref.commit(),
        device=str(device),
        card=card_name(device),
        torch=torch.__version__,
        tiny=args.tiny,
        seed=args.seed,
    )
    run = Runner(ref, NativeSide(), device, args.out, meta)
    print(format_report(meta, []), end="", flush=True)
    start = time.perf_counter()
    dtypes = (torch.float32, torch.float64)
    mesh_name, verts64, faces64 = load_mesh(args.tiny)
    if args.tiny:
        cloud_cases(run, [(2, 40, 33)], (torch.float32,), (0.2,), args.seed)
        soup_cases(run, (torch.float32,), num_faces=12, num_points=50, seed=args.seed)
        mesh_cases(run, verts64, faces64, mesh_name, (torch.float32,), n_box=64, seed=args.seed)
    else:
        sizes = [(2, 128, 100), (4, 2048, 1500), (2, 20000, 30000), (1, 100000, 100000)]
        if device.type != "cuda":  # brute-force nearest neighbours: the largest only on a GPU
            sizes = [(b, n1, n2) for b, n1, n2 in sizes if n1 * n2 <= 10**7]
        cloud_cases(run, sizes, dtypes, (0.02, 0.1), args.seed)
        cloud_edge_cases(run, args.seed)
        soup_cases(run, dtypes, num_faces=300, num_points=5000, seed=args.seed)
        mesh_cases(run, verts64, faces64, mesh_name, dtypes, n_box=20000, seed=args.seed)
    empty_cases(run, verts64, faces64, mesh_name, args.seed)
    run.meta["seconds"] = round(time.perf_counter() - start, 1)
    run.write()
    print(f"\n{len(run.rows)} rows in {run.meta['seconds']} s", flush=True)
    return run.rows


if __name__ == "__main__":
    main()
