"""
The fused decoder kernel (:mod:`dvr_plugin.accel.fused_decoder`) against the eager field.

On the CPU the kernel runs in the Triton interpreter, which needs ``TRITON_INTERPRET=1`` in the
environment before Triton is imported: the comparisons run once, in a fresh Python process
started by a module fixture (this file run as a script), and the tests check what it reports.
The interpreter computes every matrix product in float32, so the fused values must agree with
``field(points).values`` to 1e-5 of the values' scale. The input checks run in this process, and the
benchmark's quick CPU run in another; the CUDA tests compile the kernel for the GPU, compare it
with eager in every precision (float32 and 3xTF32 products to 1e-4, TF32 to 2e-2 of the
values' scale) and replay it from a CUDA graph.

Frame and units: points in the unit cube of the normalised object frame (scene units).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvr_plugin.accel.fused_decoder import (
    FusedDecoderConfig,
    default_config,
    fused_decoder_values,
    supports_fused_decoder,
)
from dvr_plugin.fields.field import OccupancyTextureField

ROOT = Path(__file__).resolve().parents[1]
# largest |fused - eager| allowed in float32, relative to max(1, max |eager|)
TOLERANCE = 1e-5
CASES = (
    "fourier_anneal",
    "reference_tiled",
    "latent",
    "latent_one_point_per_code",
    "sdf_geometric_init",
    "occupancy_sphere",
    "progress_0.2",
    "progress_0.9",
    "tf32",
    "tf32x3",
    "grad_free_parameters",
)


def perturbed_field(**kwargs) -> OccupancyTextureField:
    """A seeded field whose parameters are moved off their initialisation (``fc1`` starts at
    zero, which would make every residual block the identity)."""
    torch.manual_seed(0)
    field = OccupancyTextureField(**kwargs)
    with torch.no_grad():
        for parameter in field.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return field


def unit_cube_points(*shape: int) -> torch.Tensor:
    """`(*shape, 3)` points uniform in [-0.55, 0.55]^3, from a fixed seed."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(*shape, 3, generator=generator) * 1.1 - 0.55


def _compare(field, points, latent=None, **kwargs) -> dict:
    with torch.no_grad():
        expected = field(points, latent).values
        fused = fused_decoder_values(field, points, latent, **kwargs)
    return {
        "shape": list(fused.shape),
        "expected_shape": list(expected.shape),
        "max_abs": float((fused - expected).abs().max()),
        "scale": float(expected.abs().max()),
    }


def interpreter_report() -> dict:
    """Every comparison of :data:`CASES` (run with ``TRITON_INTERPRET=1``), plus whether
    importing the module imported Triton."""
    imported_early = "triton" in sys.modules
    torch.set_num_threads(1)
    cases: dict = {}
    field = perturbed_field(hidden_size=32, n_blocks=2, n_frequencies=6, fourier_anneal=True)
    field.set_encoding_progress(0.5)
    cases["fourier_anneal"] = _compare(field, unit_cube_points(4, 40))
    for progress in (0.2, 0.9):  # the kernel reads the progress buffer at every call
        field.set_encoding_progress(progress)
        cases[f"progress_{progress}"] = _compare(field, unit_cube_points(2, 30))
    # 150 points in tiles of 16 over two programs (the last tile masked); H = 64 in 16 x 32
    # column blocks
    field = perturbed_field(hidden_size=64, n_blocks=2)
    config = FusedDecoderConfig(block_m=16, block_n=16, block_k=32)
    cases["reference_tiled"] = _compare(field, unit_cube_points(150), config=config)
    for precision in ("tf32", "tf32x3"):
        cases[precision] = _compare(field, unit_cube_points(3, 20), precision=precision)
    field = perturbed_field(hidden_size=32, n_blocks=2, n_frequencies=3, latent_size=5)
    latent = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    cases["latent"] = _compare(field, unit_cube_points(3, 50), latent)
    # one code per ray of one point, as the surface search lays rays out: tiles span codes
    latent = torch.randn(37, 5, generator=torch.Generator().manual_seed(3))
    cases["latent_one_point_per_code"] = _compare(
        field, unit_cube_points(37, 1), latent, config=FusedDecoderConfig(block_m=16)
    )
    field = perturbed_field(hidden_size=32, n_blocks=1, n_frequencies=4, field_type="sdf")
    cases["sdf_geometric_init"] = _compare(field, unit_cube_points(2, 45))
    field = perturbed_field(
        hidden_size=16,
        n_blocks=0,
        n_frequencies=10,
        geometric_init_radius=0.25,
        geometric_init_sharpness=5.0,
    )
    cases["occupancy_sphere"] = _compare(field, unit_cube_points(2, 33))
    field = perturbed_field(hidden_size=32, n_blocks=1, n_frequencies=2).requires_grad_(False)
    points = unit_cube_points(1, 20)
    with torch.enable_grad():  # nothing requires grad: allowed with grad mode on
        fused = fused_decoder_values(field, points)
        difference = float((fused - field(points).values).abs().max())
    cases["grad_free_parameters"] = {"max_abs": difference, "scale": 1.0}
    with torch.no_grad():
        empty = fused_decoder_values(field, unit_cube_points(2, 0))
    return {"imported_triton_early": imported_early, "cases": cases, "empty": list(empty.shape)}


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_fused_decoder"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_module_does_not_import_triton(report):
    assert report["imported_triton_early"] is False


@pytest.mark.parametrize("case", CASES)
def test_interpreter_matches_the_eager_field(report, case):
    result = report["cases"][case]
    assert result["max_abs"] <= TOLERANCE * max(1.0, result["scale"]), result
    if "shape" in result:
        assert result["shape"] == result["expected_shape"]


def test_empty_points_give_empty_values(report):
    assert report["empty"] == [2, 0]


def test_benchmark_quick_run_on_the_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it
    command = [sys.executable, "-m", "integration.benchmarks.bench_fused_decoder", "--quick"]
    command += ["--device", "cpu", "--precisions", "ieee", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "bench_fused_decoder.json").read_text())
    assert written["triton_interpret"] is True
    assert [row["variant"].split(" (")[0] for row in written["rows"]] == ["eager", "fused ieee"]
    for row in written["rows"]:
        assert "error" not in row, row
        assert row["ms"] > 0
        assert row["relative_diff"] <= TOLERANCE
    assert "| fused ieee (" in (tmp_path / "bench_fused_decoder.md").read_text()


def test_default_config_gives_every_multiprocessor_a_tile():
    assert default_config(256, 65536, n_sms=132).block_m == 64
    assert default_config(256, 8192, n_sms=132).block_m == 32
    assert default_config(256, 1024, n_sms=132).block_m == 16
    config = default_config(512, 65536, n_sms=132)
    assert (config.block_n, config.block_k, config.num_warps) == (64, 64, 8)
    assert default_config(32, 100, n_sms=1).block_n == 32
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        default_config(64, 100, n_sms=1, config=FusedDecoderConfig(block_n=24))
    with pytest.raises(ValueError, match="block_m must be"):
        default_config(64, 100, n_sms=1, config=FusedDecoderConfig(block_m=8))


class _Overridden(OccupancyTextureField):
    def forward(self, points, latent=None):
        return super().forward(points, latent)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: torch.nn.Linear(3, 1), "only OccupancyTextureField is fused, got Linear"),
        (lambda: _Overridden(hidden_size=16, n_blocks=1), "overrides"),
        (lambda: OccupancyTextureField(hidden_size=48, n_blocks=1), "hidden_size must be"),
        (lambda: OccupancyTextureField(hidden_size=16, n_blocks=9), "at most 8 residual"),
        (
            lambda: OccupancyTextureField(hidden_size=16, n_blocks=1, n_frequencies=11),
            "at most 10 Fourier",
        ),
        (lambda: OccupancyTextureField(hidden_size=16, n_blocks=1).double(), "float32"),
    ],
)
def test_unsupported_fields_are_refused_by_name(build, message):
    field = build()
    assert not supports_fused_decoder(field)
    with pytest.raises(ValueError, match=message), torch.no_grad():
        fused_decoder_values(field, unit_cube_points(1, 4))


def test_supported_field():
    assert supports_fused_decoder(OccupancyTextureField(hidden_size=64, n_blocks=8))


def test_bad_inputs_are_refused():
    field = OccupancyTextureField(hidden_size=16, n_blocks=1, latent_size=4)
    with torch.no_grad():
        with pytest.raises(ValueError, match="precision must be one of"):
            fused_decoder_values(field, unit_cube_points(1, 4), torch.zeros(1, 4), precision="bf16")
        with pytest.raises(ValueError, match=r"points must have shape \(B, P, 3\)"):
            fused_decoder_values(field, torch.zeros(1, 4, 2), torch.zeros(1, 4))
        with pytest.raises(ValueError, match="points must be float32"):
            fused_decoder_values(field, unit_cube_points(1, 4).double(), torch.zeros(1, 4))
        with pytest.raises(ValueError, match="needs a latent code of size 4"):
            fused_decoder_values(field, unit_cube_points(1, 4))
        with pytest.raises(ValueError, match=r"latent must have shape \(2, 4\)"):
            fused_decoder_values(field, unit_cube_points(2, 4), torch.zeros(1, 4))
        with pytest.raises(ValueError, match=r"points must have shape \(B, P, 3\)"):
            fused_decoder_values(field, unit_cube_points(2, 4).reshape(8, 3), torch.zeros(8, 4))


def test_a_call_that_autograd_would_record_is_refused():
    field = OccupancyTextureField(hidden_size=16, n_blocks=1)
    with pytest.raises(ValueError, match="no gradients: call it under torch.no_grad"):
        fused_decoder_values(field, unit_cube_points(1, 4))
    points = unit_cube_points(1, 4).requires_grad_(True)
    field.requires_grad_(False)
    with pytest.raises(ValueError, match="no gradients"):
        fused_decoder_values(field, points)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter mode is on")
def test_cpu_points_outside_the_interpreter_are_refused():
    pytest.importorskip("triton")
    field = OccupancyTextureField(hidden_size=16, n_blocks=1)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"), torch.no_grad():
        fused_decoder_values(field, unit_cube_points(1, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter mode is on")
@pytest.mark.parametrize(
    ("precision", "tolerance"), [("ieee", 1e-4), ("tf32x3", 1e-4), ("tf32", 2e-2)]
)
@pytest.mark.parametrize("latent_size", [0, 16])
@pytest.mark.parametrize("n_points", [1000, 20000])
def test_cuda_matches_the_eager_field(monkeypatch, precision, tolerance, latent_size, n_points):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    field = perturbed_field(
        hidden_size=256,
        n_blocks=5,
        n_frequencies=6,
        fourier_anneal=True,
        latent_size=latent_size,
    ).cuda()
    field.set_encoding_progress(0.5)
    points = unit_cube_points(4, n_points // 4).cuda()
    latent = torch.randn(4, latent_size, device="cuda") if latent_size else None
    with torch.no_grad():
        expected = field(points, latent).values
        fused = fused_decoder_values(field, points, latent, precision=precision)
    scale = max(1.0, float(expected.abs().max()))
    assert float((fused - expected).abs().max()) <= tolerance * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter mode is on")
def test_cuda_graph_replay_reads_the_current_weights_and_progress():
    field = perturbed_field(
        hidden_size=64, n_blocks=2, n_frequencies=4, fourier_anneal=True, field_type="sdf"
    ).cuda()
    field.set_encoding_progress(0.3)
    points = unit_cube_points(2, 500).cuda()
    with torch.no_grad():
        fused_decoder_values(field, points)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            recorded = fused_decoder_values(field, points)
        for parameter in field.parameters():
            parameter.mul_(1.1)
        field.set_encoding_progress(0.8)
        graph.replay()
        expected = field(points).values
    assert float((recorded - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


if __name__ == "__main__":  # the interpreter comparisons, in a process with TRITON_INTERPRET=1
    print(json.dumps(interpreter_report()))
