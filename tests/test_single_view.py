"""Single-view reconstruction: encoder, generated category, loader, training, reconstruct, eval."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvr_plugin.cli.main import build_parser, main
from dvr_plugin.cli.single_view import wants_single_view
from dvr_plugin.engine.run_outputs import RUN_OUTPUTS
from dvr_plugin.renderer.raysampler import SecantRaysampler
from dvr_plugin.renderer.renderer import DVRRenderer
from dvr_plugin.single_view.category import CategorySettings, make_category
from dvr_plugin.single_view.config import load_single_view_config
from dvr_plugin.single_view.dataset import load_category, read_split
from dvr_plugin.single_view.encoder import (
    RANDOM_INIT_NOTICE,
    ResNet18Trunk,
    ResNetEncoder,
    torchvision_available,
)
from dvr_plugin.single_view.trainer import (
    SingleViewTrainer,
    load_training_data,
    model_from_checkpoint,
)
from tests.core_factories import SphereMLPField, rays_towards_centre, surface_depth

TINY = [
    "device=cpu",
    "encoder.latent_size=32",
    "model.hidden_size=32",
    "model.n_blocks=2",
    "model.n_frequencies=4",
    "optim.lr=2e-3",
    "optim.lr_milestones=[]",
    "train.objects_per_batch=2",
    "train.rays_per_image=96",
    "train.step_milestones={0: 16}",
    "eval.validate_every=0",
    "eval.checkpoint_every=0",
    "eval.log_every=1",
    "eval.n_steps=32",
    "eval.max_objects=2",
    "eval.mesh_resolution=32",
    "eval.mesh_points=2000",
    "eval.tensorboard=false",
]
FIT_STEPS = 60


class SingleViewFactory:
    """Seeded inputs shared by the tests and reused by benchmarks."""

    @staticmethod
    def category(root: str, **overrides) -> dict:
        """A tiny generated category: 2 classes x (3 train, 1 val, 1 test) x 3 views, 32x32."""
        options = dict(
            classes=["chair", "table"], n_train=3, n_val=1, n_test=1, n_views=3, image_size=32
        )
        options.update(overrides)
        return make_category(root, CategorySettings(**options), progress=False, workers=2)

    @staticmethod
    def config(root: str, *extra: str):
        return load_single_view_config(None, [f"data.path={root}", *TINY, *extra])


@pytest.fixture(scope="module")
def fitted():
    """
    The tiny category and a short CLI training run, made once per module: ``tmp`` (removed
    afterwards), the category ``root``, the fit's ``out`` folder and its ``stderr``.
    """
    tmp = tempfile.mkdtemp(prefix="dvr-single-view-")
    root = os.path.join(tmp, "category")
    SingleViewFactory.category(root)
    out = os.path.join(tmp, "fit")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            ["fit", "--task", "single-view", "--data", root, "--out", out, "--quiet"]
            + TINY
            + [
                f"train.iterations={FIT_STEPS}",
                "train.objects_per_batch=4",
                "eval.validate_every=30",
            ]
        )
    assert code == 0, stderr.getvalue()
    yield {"tmp": tmp, "root": root, "out": out, "stderr": stderr.getvalue()}
    shutil.rmtree(tmp, ignore_errors=True)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def warnings_logged(name: str):
    """The records logged at WARNING or above by logger ``name`` (or its children) in the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def seeded():
    """The encoder's tests start from the same global random state."""
    torch.manual_seed(0)


@pytest.mark.usefixtures("seeded")
def test_output_shape_and_random_init_notice():
    with warnings_logged("dvr_plugin.single_view") as records:
        encoder = ResNetEncoder()
    assert records, "no warning logged by dvr_plugin.single_view"
    assert RANDOM_INIT_NOTICE in "\n".join(record.getMessage() for record in records)
    assert not encoder.pretrained
    codes = encoder(torch.rand(2, 32, 32, 3))
    assert tuple(codes.shape) == (2, 256)
    assert bool(torch.isfinite(codes).all())
    resized = ResNetEncoder(latent_size=8, input_size=48, warn_random_init=False).eval()
    assert tuple(resized(torch.rand(1, 20, 30, 3)).shape) == (1, 8)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        encoder(torch.rand(2, 3, 32, 32))


@pytest.mark.usefixtures("seeded")
def test_weights_file_and_builtin_trunk():
    trunk = ResNet18Trunk()
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in trunk.state_dict().items()
    }
    state["fc.weight"] = torch.zeros(1000, 512)  # a classifier is dropped on load
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18.pth")
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
        encoder = ResNetEncoder(latent_size=16, weights=path, backbone="builtin")
        assert encoder.pretrained
        torch.testing.assert_close(encoder.features.conv1.weight, state["conv1.weight"])
        torch.save({"conv1.weight": torch.zeros(3)}, path)
        with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
            ResNetEncoder(weights=path, backbone="builtin")
        with pytest.raises(FileNotFoundError):
            ResNetEncoder(weights=os.path.join(tmp, "missing.pth"))
    if torchvision_available():
        from torchvision.models import resnet18

        reference = resnet18(weights=None).eval()
        builtin = ResNet18Trunk().eval()
        weights = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
        assert set(weights) == set(builtin.state_dict())
        builtin.load_state_dict(weights)
        reference.fc = torch.nn.Identity()
        x = torch.rand(2, 3, 40, 40)
        torch.testing.assert_close(builtin(x), reference(x))


@pytest.mark.usefixtures("seeded")
def test_gradients_reach_the_encoder_through_the_implicit_gradient():
    from pytorch3d.renderer import FoVPerspectiveCameras, look_at_view_transform

    encoder = ResNetEncoder(latent_size=4, warn_random_init=False)
    field = SphereMLPField(latent_size=4)
    renderer = DVRRenderer(
        field=field,
        raysampler=SecantRaysampler(n_steps=32, compute_normals=False),
        background_color=1.0,
    )
    R, T = look_at_view_transform(1.6, 20.0, torch.tensor([0.0, 90.0]))
    cameras = FoVPerspectiveCameras(R=R, T=T, fov=50.0)
    xys = 0.3 * (2 * torch.rand(2, 48, 2) - 1)
    codes = encoder(torch.rand(2, 32, 32, 3))
    out = renderer(cameras, xys=xys, latent=0.1 * codes)  # small codes keep the sphere
    assert float(out.hit.float().mean()) > 0.9
    loss = (out.images - 0.5).abs().sum() + out.depths.sum()
    loss.backward()
    for name in ("fc.weight", "features.conv1.weight", "features.layer4.1.conv2.weight"):
        grad = dict(encoder.named_parameters())[name].grad
        assert grad is not None, name
        assert bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().sum()) > 0.0, name


@pytest.mark.usefixtures("seeded")
def test_latent_gradient_matches_finite_differences():
    """d(depth + colour loss)/d(code) through root finding, float64, central differences."""
    field = SphereMLPField(latent_size=4, seed=3).double()
    origins, directions = rays_towards_centre(5, seed=4)
    weights = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    code = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def loss(c: torch.Tensor) -> torch.Tensor:
        latent = c.expand(5, 4)
        depth, hit = surface_depth(field, origins, directions, latent=latent)
        assert bool(hit.all())
        points = origins + depth[:, None] * directions
        rgb = field.mlp(points[:, None, :], latent).rgb[:, 0]
        return (weights * depth).sum() + (weights[:, None] * rgb).sum()

    variable = code.clone().requires_grad_(True)
    loss(variable).backward()
    step = 1e-6
    for j in range(4):
        plus, minus = code.clone(), code.clone()
        plus[0, j] += step
        minus[0, j] -= step
        with torch.no_grad():
            numeric = (loss(plus) - loss(minus)).item() / (2 * step)
        assert variable.grad[0, j].item() == pytest.approx(numeric, abs=1e-6 + 1e-5 * abs(numeric))


def test_layout_and_loader(fitted):
    root = Path(fitted["root"])
    assert (root / "metadata.yaml").is_file()
    assert read_split(root, "train")[0] == ("chair", "chair_0000")
    first = root / "chair" / "chair_0000"
    for name in ("image", "mask", "depth", "cameras.npz", "mesh.ply"):
        assert (first / name).exists(), name
    data = load_category(root, "train")
    assert len(data) == 6
    assert data.classes == ["chair", "table"]
    assert tuple(data.images.shape) == (18, 32, 32, 3)
    assert data.images.dtype == torch.uint8
    assert tuple(data.masks.shape) == (18, 32, 32)
    assert data.depth_kind == "depth"
    assert torch.equal(data.depths > 0, data.masks)
    assert data.n_views.tolist() == [3] * 6
    assert data.view_index(torch.tensor([1, 2]), 0).tolist() == [3, 6]
    views = data.random_views(torch.arange(6), torch.Generator().manual_seed(0))
    assert bool(((views - data.view_offsets[:-1]) < 3).all())
    limited = load_category(root, "test", max_views=2, depth="none")
    assert tuple(limited.images.shape) == (4, 32, 32, 3)
    assert limited.depths is None


def test_masks_line_up_with_the_projected_mesh(fitted):
    data = load_category(fitted["root"], "train")
    for index in (0, 4):
        views = data.object_views(index)
        gt = data.ground_truth(index)
        from pytorch3d.ops import sample_points_from_meshes

        points = sample_points_from_meshes(gt.mesh, 3000)[0]
        in_mask, in_image = views.lookup_masks(points)
        assert bool(in_image.all())
        assert float(in_mask.float().mean()) > 0.8
        grown = torch.nn.functional.max_pool2d(views.masks[:, None].float(), 3, 1, 1)[:, 0]
        pixels, _ = views.project(points)
        cols = pixels[..., 0].long().clamp(0, 31)
        rows = pixels[..., 1].long().clamp(0, 31)
        hit = grown[torch.arange(len(views))[:, None], rows, cols]
        assert float(hit.mean()) > 0.99
        # The centre of each mask sits on the centre of the projected surface points.
        for v in range(len(views)):
            ys, xs = views.masks[v].nonzero(as_tuple=True)
            centre = torch.stack([xs.float().mean(), ys.float().mean()]) + 0.5
            assert float((centre - pixels[v].mean(0)).norm()) < 2.0


def test_bad_inputs(fitted):
    root = Path(fitted["root"])
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(FileNotFoundError, match="not found"):
            load_category(os.path.join(tmp, "nowhere"))
        (Path(tmp) / "chair").mkdir()
        (Path(tmp) / "chair" / "train.lst").write_text("\n")
        with pytest.raises(ValueError, match="name no objects"):
            load_category(tmp, "train")
        with pytest.raises(FileNotFoundError, match="test.lst"):
            load_category(tmp, "test")
        assert load_category(tmp, "val", required=False) is None
        (Path(tmp) / "chair" / "train.lst").write_text("ghost\n")
        with pytest.raises(FileNotFoundError, match="do not exist"):
            load_category(tmp, "train")
        with pytest.raises(ValueError, match="not empty"):
            make_category(tmp, CategorySettings(n_train=1), progress=False)
        with pytest.raises(ValueError, match="Unknown shape classes"):
            CategorySettings(classes=["sofa"])
        # Objects of another image size.
        other = Path(tmp) / "other"
        SingleViewFactory.category(
            str(other),
            classes=["lamp"],
            n_train=1,
            n_val=0,
            n_test=0,
            n_views=2,
            image_size=24,
        )
        shutil.copytree(other / "lamp" / "lamp_0000", root / "chair" / "lamp_0000")
        try:
            (root / "chair" / "odd.lst").write_text("chair_0000\nlamp_0000\n")
            with pytest.raises(ValueError, match="24x24 but 32x32"):
                load_category(root, "odd", classes=["chair"])
        finally:
            shutil.rmtree(root / "chair" / "lamp_0000")
            (root / "chair" / "odd.lst").unlink()
    with pytest.raises(FileNotFoundError, match="Class folder"):
        load_category(root, "train", classes=["sofa"])
    with pytest.raises(ValueError, match="16x16 are expected"):
        load_category(root, "test", image_size=(16, 16))


def test_fit_outputs_and_loss_decreases(fitted):
    state = fitted
    out = Path(state["out"])
    assert "random initialisation" in state["stderr"]
    for name in (*RUN_OUTPUTS, "summary.json"):
        assert (out / name).is_file(), name
    from dvr_plugin.engine.logs import read_csv

    log = read_csv(str(out / "train_log.csv"))
    assert len(log["loss"]) == FIT_STEPS
    # The mask terms (the colour term grows as rays start to hit) fall, agreement rises.
    mask_terms = np.add(log["freespace"], log["occupancy"])
    assert np.mean(mask_terms[-10:]) < 0.8 * np.mean(mask_terms[:10])
    agreement = log["train_mask_agreement"]
    assert np.mean(agreement[-10:]) > np.mean(agreement[:10]) + 0.1
    assert read_csv(str(out / "val_log.csv"))["step"] == [0, 30, 60]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["iterations"] == FIT_STEPS
    assert not summary["model"]["encoder"]["pretrained"]
    model, config, ckpt = model_from_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["image_size"] == [32, 32]
    assert config.encoder.latent_size == 32


def test_resume_equals_uninterrupted(fitted):
    root = fitted["root"]
    config = SingleViewFactory.config(root, "train.iterations=4")
    train, _ = load_training_data(config, torch.device("cpu"))
    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            whole = SingleViewTrainer(config=config, train_data=train, progress=False)
            for _ in range(4):
                whole.train_step()
            first = SingleViewTrainer(
                config=config, train_data=train, out_dir=tmp, progress=False
            )
            for _ in range(2):
                first.train_step()
            first.save_checkpoint()
            with pytest.raises(ValueError, match="already holds a checkpoint"):
                SingleViewTrainer(config=config, train_data=train, out_dir=tmp)
            second = SingleViewTrainer(
                config=config, train_data=train, out_dir=tmp, resume=True, progress=False
            )
            assert second.step == 2
            for _ in range(2):
                second.train_step()
            for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            with pytest.raises(FileNotFoundError):
                SingleViewTrainer(
                    config=config,
                    train_data=train,
                    out_dir=os.path.join(tmp, "x"),
                    resume=True,
                )
    finally:
        logging.disable(logging.NOTSET)


def test_depth_supervision_needs_depth_maps(fitted):
    root = fitted["root"]
    config = SingleViewFactory.config(root, "train.supervision=depth", "data.depth=none")
    train, _ = load_training_data(config, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs true depth maps"):
        SingleViewTrainer(config=config, train_data=train, progress=False)
    assert SingleViewFactory.config(root, "train.supervision=both").loss_weights().depth == 10.0
    with pytest.raises(ValueError, match="objects_per_batch must be >= 2"):
        SingleViewFactory.config(root, "train.objects_per_batch=1")
    with pytest.raises(ValueError, match="Unknown config key"):
        SingleViewFactory.config(root, "train.nonsense=1")


def test_cli_routing():
    parser = build_parser()
    args = parser.parse_args(["fit", "--out", "x"])
    assert args.task is None
    assert not wants_single_view(args)
    args = parser.parse_args(["fit", "--config", "single_view", "--out", "x"])
    assert wants_single_view(args)
    args = parser.parse_args(["fit", "--config", "demo", "--out", "x"])
    assert not wants_single_view(args)
    code, _, err = run_cli(["fit", "--task", "single-view", "--out", "x", "--format", "dtu"])
    assert code == 2
    assert "--format does not apply" in err
    code, _, err = run_cli(
        ["fit", "--task", "single-view", "--data", "/nonexistent/dvr", "--out", "x"]
    )
    assert code == 2
    assert "not found" in err


def test_reconstruct(fitted):
    state = fitted
    checkpoint = os.path.join(state["out"], "checkpoint.pt")
    image = os.path.join(state["root"], "chair", "chair_0004", "image", "0000.png")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "recon")
        code, stdout, err = run_cli(
            [
                "reconstruct",
                image,
                "--checkpoint",
                checkpoint,
                "--out",
                out,
                "--device",
                "cpu",
                "--resolution",
                "32",
                "--frames",
                "3",
                "--size",
                "32",
                "--steps",
                "32",
            ]
        )
        assert code == 0, stdout + err
        for name in ("mesh.ply", "turntable.gif", "renders.png", "reconstruction.json"):
            assert os.path.isfile(os.path.join(out, name)), name
        big = os.path.join(tmp, "big.png")
        Image.open(image).resize((48, 48)).save(big)
        code, _, err = run_cli(
            [
                "reconstruct", big, "--checkpoint", checkpoint, "--out", out, "--device",
                "cpu", "--force",
            ]
        )
        assert code == 2
        assert "pass --resize" in err
        code, _, err = run_cli(
            ["reconstruct", image, "--checkpoint", os.path.join(tmp, "none.pt"), "--out", out]
        )
        assert code == 2


def test_evaluate_against_retrieval(fitted):
    state = fitted
    checkpoint = os.path.join(state["out"], "checkpoint.pt")
    with tempfile.TemporaryDirectory() as tmp:
        code, stdout, err = run_cli(
            [
                "eval-category",
                checkpoint,
                "--out",
                tmp,
                "--device",
                "cpu",
                "--quiet",
                "--points",
                "1000",
            ]
        )
        assert code == 0, err
        assert "retrieval (nearest encoder code)" in stdout
        report = json.loads(Path(tmp, "results.json").read_text())
        assert report["n_objects"] == 2
        assert set(report["methods"]) == {"dvr", "retrieval", "oracle"}
        for method in ("dvr", "retrieval", "oracle"):
            table = report["methods"][method]
            assert set(table["per_class"]) == {"chair", "table"}
            assert np.isfinite(table["class_mean"]["chamfer_l1"])
        oracle = report["methods"]["oracle"]["object_mean"]["chamfer_l1"]
        retrieval = report["methods"]["retrieval"]["object_mean"]["chamfer_l1"]
        assert oracle <= retrieval + 0.01
        assert Path(tmp, "figure.png").is_file()
        assert Path(tmp, "results.md").is_file()

