"""Single-view reconstruction: encoder, generated category, loader, training, reconstruct, eval."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dvr_plugin.cli import build_parser, main
from dvr_plugin.raysampler import SecantRaysampler
from dvr_plugin.renderer import DVRRenderer
from dvr_plugin.single_view.category import CategorySettings, make_category
from dvr_plugin.single_view.cli import wants_single_view
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
_SHARED: dict = {}


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


def shared() -> dict:
    """The tiny category and a short CLI training run, made once per module."""
    if not _SHARED:
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
        _SHARED.update(tmp=tmp, root=root, out=out, stderr=stderr.getvalue())
    return _SHARED


def tearDownModule():  # noqa: N802 - unittest hook
    if _SHARED:
        shutil.rmtree(_SHARED["tmp"], ignore_errors=True)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


class TestEncoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_output_shape_and_random_init_notice(self):
        with self.assertLogs("dvr_plugin.single_view", level="WARNING") as logs:
            encoder = ResNetEncoder()
        self.assertIn(RANDOM_INIT_NOTICE, "\n".join(logs.output))
        self.assertFalse(encoder.pretrained)
        codes = encoder(torch.rand(2, 32, 32, 3))
        self.assertEqual(tuple(codes.shape), (2, 256))
        self.assertTrue(bool(torch.isfinite(codes).all()))
        resized = ResNetEncoder(latent_size=8, input_size=48, warn_random_init=False).eval()
        self.assertEqual(tuple(resized(torch.rand(1, 20, 30, 3)).shape), (1, 8))
        with self.assertRaisesRegex(ValueError, r"\(B, H, W, 3\)"):
            encoder(torch.rand(2, 3, 32, 32))

    def test_weights_file_and_builtin_trunk(self):
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
            self.assertTrue(encoder.pretrained)
            torch.testing.assert_close(encoder.features.conv1.weight, state["conv1.weight"])
            torch.save({"conv1.weight": torch.zeros(3)}, path)
            with self.assertRaisesRegex(ValueError, "not a ResNet-18 state dict"):
                ResNetEncoder(weights=path, backbone="builtin")
            with self.assertRaises(FileNotFoundError):
                ResNetEncoder(weights=os.path.join(tmp, "missing.pth"))
        if torchvision_available():
            from torchvision.models import resnet18

            reference = resnet18(weights=None).eval()
            builtin = ResNet18Trunk().eval()
            weights = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
            self.assertEqual(set(weights), set(builtin.state_dict()))
            builtin.load_state_dict(weights)
            reference.fc = torch.nn.Identity()
            x = torch.rand(2, 3, 40, 40)
            torch.testing.assert_close(builtin(x), reference(x))

    def test_gradients_reach_the_encoder_through_the_implicit_gradient(self):
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
        self.assertGreater(float(out.hit.float().mean()), 0.9)
        loss = (out.images - 0.5).abs().sum() + out.depths.sum()
        loss.backward()
        for name in ("fc.weight", "features.conv1.weight", "features.layer4.1.conv2.weight"):
            grad = dict(encoder.named_parameters())[name].grad
            self.assertIsNotNone(grad, name)
            self.assertTrue(bool(torch.isfinite(grad).all()), name)
            self.assertGreater(float(grad.abs().sum()), 0.0, name)

    def test_latent_gradient_matches_finite_differences(self):
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
            self.assertAlmostEqual(
                variable.grad[0, j].item(), numeric, delta=1e-6 + 1e-5 * abs(numeric)
            )


class TestCategoryData(unittest.TestCase):
    def test_layout_and_loader(self):
        root = Path(shared()["root"])
        self.assertTrue((root / "metadata.yaml").is_file())
        self.assertEqual(read_split(root, "train")[0], ("chair", "chair_0000"))
        first = root / "chair" / "chair_0000"
        for name in ("image", "mask", "depth", "cameras.npz", "mesh.ply"):
            self.assertTrue((first / name).exists(), name)
        data = load_category(root, "train")
        self.assertEqual(len(data), 6)
        self.assertEqual(data.classes, ["chair", "table"])
        self.assertEqual(tuple(data.images.shape), (18, 32, 32, 3))
        self.assertEqual(data.images.dtype, torch.uint8)
        self.assertEqual(tuple(data.masks.shape), (18, 32, 32))
        self.assertEqual(data.depth_kind, "depth")
        self.assertTrue(torch.equal(data.depths > 0, data.masks))
        self.assertEqual(data.n_views.tolist(), [3] * 6)
        self.assertEqual(data.view_index(torch.tensor([1, 2]), 0).tolist(), [3, 6])
        views = data.random_views(torch.arange(6), torch.Generator().manual_seed(0))
        self.assertTrue(bool(((views - data.view_offsets[:-1]) < 3).all()))
        limited = load_category(root, "test", max_views=2, depth="none")
        self.assertEqual(tuple(limited.images.shape), (4, 32, 32, 3))
        self.assertIsNone(limited.depths)

    def test_masks_line_up_with_the_projected_mesh(self):
        data = load_category(shared()["root"], "train")
        for index in (0, 4):
            views = data.object_views(index)
            gt = data.ground_truth(index)
            from pytorch3d.ops import sample_points_from_meshes

            points = sample_points_from_meshes(gt.mesh, 3000)[0]
            in_mask, in_image = views.lookup_masks(points)
            self.assertTrue(bool(in_image.all()))
            self.assertGreater(float(in_mask.float().mean()), 0.8)
            grown = torch.nn.functional.max_pool2d(views.masks[:, None].float(), 3, 1, 1)[:, 0]
            pixels, _ = views.project(points)
            cols = pixels[..., 0].long().clamp(0, 31)
            rows = pixels[..., 1].long().clamp(0, 31)
            hit = grown[torch.arange(len(views))[:, None], rows, cols]
            self.assertGreater(float(hit.mean()), 0.99)
            # The centre of each mask sits on the centre of the projected surface points.
            for v in range(len(views)):
                ys, xs = views.masks[v].nonzero(as_tuple=True)
                centre = torch.stack([xs.float().mean(), ys.float().mean()]) + 0.5
                self.assertLess(float((centre - pixels[v].mean(0)).norm()), 2.0)

    def test_bad_inputs(self):
        root = Path(shared()["root"])
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(FileNotFoundError, "not found"):
                load_category(os.path.join(tmp, "nowhere"))
            (Path(tmp) / "chair").mkdir()
            (Path(tmp) / "chair" / "train.lst").write_text("\n")
            with self.assertRaisesRegex(ValueError, "name no objects"):
                load_category(tmp, "train")
            with self.assertRaisesRegex(FileNotFoundError, "test.lst"):
                load_category(tmp, "test")
            self.assertIsNone(load_category(tmp, "val", required=False))
            (Path(tmp) / "chair" / "train.lst").write_text("ghost\n")
            with self.assertRaisesRegex(FileNotFoundError, "do not exist"):
                load_category(tmp, "train")
            with self.assertRaisesRegex(ValueError, "not empty"):
                make_category(tmp, CategorySettings(n_train=1), progress=False)
            with self.assertRaisesRegex(ValueError, "Unknown shape classes"):
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
                with self.assertRaisesRegex(ValueError, "24x24 but 32x32"):
                    load_category(root, "odd", classes=["chair"])
            finally:
                shutil.rmtree(root / "chair" / "lamp_0000")
                (root / "chair" / "odd.lst").unlink()
        with self.assertRaisesRegex(FileNotFoundError, "Class folder"):
            load_category(root, "train", classes=["sofa"])
        with self.assertRaisesRegex(ValueError, "16x16 are expected"):
            load_category(root, "test", image_size=(16, 16))


class TestTraining(unittest.TestCase):
    def test_fit_outputs_and_loss_decreases(self):
        state = shared()
        out = Path(state["out"])
        self.assertIn("random initialisation", state["stderr"])
        for name in (
            "checkpoint.pt",
            "config.yaml",
            "train_log.csv",
            "val_log.csv",
            "curves.png",
            "comparison.png",
            "summary.json",
        ):
            self.assertTrue((out / name).is_file(), name)
        from dvr_plugin.training.logs import read_csv

        log = read_csv(str(out / "train_log.csv"))
        self.assertEqual(len(log["loss"]), FIT_STEPS)
        # The mask terms (the colour term grows as rays start to hit) fall, agreement rises.
        mask_terms = np.add(log["freespace"], log["occupancy"])
        self.assertLess(np.mean(mask_terms[-10:]), 0.8 * np.mean(mask_terms[:10]))
        agreement = log["train_mask_agreement"]
        self.assertGreater(np.mean(agreement[-10:]), np.mean(agreement[:10]) + 0.1)
        self.assertEqual(read_csv(str(out / "val_log.csv"))["step"], [0, 30, 60])
        summary = json.loads((out / "summary.json").read_text())
        self.assertEqual(summary["train"]["iterations"], FIT_STEPS)
        self.assertFalse(summary["model"]["encoder"]["pretrained"])
        model, config, ckpt = model_from_checkpoint(str(out / "checkpoint.pt"))
        self.assertEqual(ckpt["image_size"], [32, 32])
        self.assertEqual(config.encoder.latent_size, 32)

    def test_resume_equals_uninterrupted(self):
        root = shared()["root"]
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
                with self.assertRaisesRegex(ValueError, "already holds a checkpoint"):
                    SingleViewTrainer(config=config, train_data=train, out_dir=tmp)
                second = SingleViewTrainer(
                    config=config, train_data=train, out_dir=tmp, resume=True, progress=False
                )
                self.assertEqual(second.step, 2)
                for _ in range(2):
                    second.train_step()
                for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
                with self.assertRaises(FileNotFoundError):
                    SingleViewTrainer(
                        config=config,
                        train_data=train,
                        out_dir=os.path.join(tmp, "x"),
                        resume=True,
                    )
        finally:
            logging.disable(logging.NOTSET)

    def test_depth_supervision_needs_depth_maps(self):
        root = shared()["root"]
        config = SingleViewFactory.config(root, "train.supervision=depth", "data.depth=none")
        train, _ = load_training_data(config, torch.device("cpu"))
        with self.assertRaisesRegex(ValueError, "needs true depth maps"):
            SingleViewTrainer(config=config, train_data=train, progress=False)
        self.assertEqual(
            SingleViewFactory.config(root, "train.supervision=both").loss_weights().depth, 10.0
        )
        with self.assertRaisesRegex(ValueError, "objects_per_batch must be >= 2"):
            SingleViewFactory.config(root, "train.objects_per_batch=1")
        with self.assertRaisesRegex(ValueError, "Unknown config key"):
            SingleViewFactory.config(root, "train.nonsense=1")

    def test_cli_routing(self):
        parser = build_parser()
        args = parser.parse_args(["fit", "--out", "x"])
        self.assertIsNone(args.task)
        self.assertFalse(wants_single_view(args))
        args = parser.parse_args(["fit", "--config", "single_view", "--out", "x"])
        self.assertTrue(wants_single_view(args))
        args = parser.parse_args(["fit", "--config", "demo", "--out", "x"])
        self.assertFalse(wants_single_view(args))
        code, _, err = run_cli(["fit", "--task", "single-view", "--out", "x", "--format", "dtu"])
        self.assertEqual(code, 2)
        self.assertIn("--format does not apply", err)
        code, _, err = run_cli(
            ["fit", "--task", "single-view", "--data", "/nonexistent/dvr", "--out", "x"]
        )
        self.assertEqual(code, 2)
        self.assertIn("not found", err)


class TestReconstructAndEvaluate(unittest.TestCase):
    def test_reconstruct(self):
        state = shared()
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
            self.assertEqual(code, 0, stdout + err)
            for name in ("mesh.ply", "turntable.gif", "renders.png", "reconstruction.json"):
                self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
            big = os.path.join(tmp, "big.png")
            Image.open(image).resize((48, 48)).save(big)
            code, _, err = run_cli(
                [
                    "reconstruct", big, "--checkpoint", checkpoint, "--out", out, "--device",
                    "cpu", "--force",
                ]
            )
            self.assertEqual(code, 2)
            self.assertIn("pass --resize", err)
            code, _, err = run_cli(
                ["reconstruct", image, "--checkpoint", os.path.join(tmp, "none.pt"), "--out", out]
            )
            self.assertEqual(code, 2)

    def test_evaluate_against_retrieval(self):
        state = shared()
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
            self.assertEqual(code, 0, err)
            self.assertIn("retrieval (nearest encoder code)", stdout)
            report = json.loads(Path(tmp, "results.json").read_text())
            self.assertEqual(report["n_objects"], 2)
            self.assertEqual(set(report["methods"]), {"dvr", "retrieval", "oracle"})
            for method in ("dvr", "retrieval", "oracle"):
                table = report["methods"][method]
                self.assertEqual(set(table["per_class"]), {"chair", "table"})
                self.assertTrue(np.isfinite(table["class_mean"]["chamfer_l1"]))
            oracle = report["methods"]["oracle"]["object_mean"]["chamfer_l1"]
            retrieval = report["methods"]["retrieval"]["object_mean"]["chamfer_l1"]
            self.assertLessEqual(oracle, retrieval + 0.01)
            self.assertTrue(Path(tmp, "figure.png").is_file())
            self.assertTrue(Path(tmp, "results.md").is_file())


if __name__ == "__main__":
    unittest.main()
