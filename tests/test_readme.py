"""
The README's Python blocks run as written, on the CPU, in order and in one namespace (the later
blocks build on the earlier ones), and they mean what they say: the render sees the object and
the training snippet's loss sends a non-zero gradient to the field.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks() -> list[str]:
    with open(README, encoding="utf-8") as handle:
        return PYTHON_BLOCK.findall(handle.read())


@pytest.fixture(scope="module")
def namespace() -> dict:
    """Every block run in order in one namespace (seeded, CPU)."""
    blocks = readme_blocks()
    assert blocks, "README.md has no ```python blocks"
    torch.manual_seed(0)
    names: dict = {"__name__": "readme"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), names)
        except Exception as error:  # report which block failed
            pytest.fail(f"README.md python block {number} failed: {type(error).__name__}: {error}")
    return names


@pytest.fixture(scope="module")
def full_render(namespace):
    """The quickstart's render of both cameras (no gradients)."""
    with torch.no_grad():
        return namespace["renderer"](namespace["cameras"])


def test_every_block_runs(namespace):
    assert len(readme_blocks()) >= 2
    assert "images" in namespace and "loss" in namespace


def test_quickstart_render_sees_the_object(full_render):
    out = full_render
    assert out.images.shape == (2, 64, 64, 3)
    coverage = out.masks.mean().item()
    assert 0.05 < coverage < 0.9, coverage  # the starting sphere is in view, not the whole image
    assert bool(torch.isfinite(out.images).all())


def test_training_snippet_gives_a_non_zero_gradient(namespace):
    field = namespace["field"]
    assert int(namespace["both"].sum()) > 0, "no ray sees both surfaces"
    assert float(namespace["loss"].detach()) > 0.0
    gradients = [p.grad for p in field.parameters() if p.grad is not None]
    assert gradients, "loss.backward() left the field without gradients"
    assert all(bool(torch.isfinite(g).all()) for g in gradients)
    assert float(field.fc_out.weight.grad.abs().max()) > 0.0


def test_training_snippet_gradient_points_towards_the_target(namespace):
    # the field starts as a sphere of radius 0.3, the target is 0.35: a small step against
    # the gradient must lower the depth loss on the same rays
    field, out, target, both = (namespace[k] for k in ("field", "out", "target", "both"))
    xys = out.ray_bundle.xys.detach()
    renderer = namespace["renderer"]

    def loss() -> float:
        with torch.no_grad():
            depths = renderer(namespace["cameras"], xys=xys, n_steps=16).depths
        return float((depths - target.depths)[both].abs().mean())

    before = loss()
    with torch.no_grad():
        saved = [p.detach().clone() for p in field.parameters()]
        for p in field.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad / max(float(p.grad.abs().max()), 1e-12)
    try:
        assert loss() < before
    finally:
        with torch.no_grad():
            for p, value in zip(field.parameters(), saved, strict=True):
                p.copy_(value)


def test_implicit_renderer_block_matches_dvr_renderer(namespace, full_render):
    images, out = namespace["images"], full_render
    assert images.shape == (2, 64, 64, 8)
    torch.testing.assert_close(images[..., 3], out.masks)
    hit = out.masks > 0
    torch.testing.assert_close(images[..., 4][hit], out.depths[hit], atol=1e-3, rtol=0)
