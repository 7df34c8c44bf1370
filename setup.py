"""
Installs ``dvr-plugin`` (import name ``dvr_plugin``, with ``dvr_plugin.implicitron``) and the
``dvr`` command. ``integration/`` (comparison harness, benchmarks, GPU scripts) is not installed:
it runs from a source checkout (``python -m integration.compare``).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """``__version__`` of ``dvr_plugin/__init__.py``, the single source of the version."""
    text = (HERE / "dvr_plugin" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError('dvr_plugin/__init__.py has no line __version__ = "...".')
    return match.group(1)


# PyTorch3D is needed at import. easypytorch3d provides `import pytorch3d`; its compiled part
# matches torch 2.11 only, hence the torch range.
PYTORCH3D = "easypytorch3d==0.7.9.post1"
IMPLICITRON = ["omegaconf", "hydra-core", "torchvision"]

setup(
    name="dvr-plugin",
    version=read_version(),
    description=(
        "Differentiable Volumetric Rendering (Niemeyer et al., CVPR 2020) as a PyTorch3D renderer"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["dvr_plugin", "dvr_plugin.*"]),
    include_package_data=True,
    package_data={"dvr_plugin": ["configs/*.yaml", "implicitron/*.yaml"]},
    install_requires=[
        "torch>=2.11,<2.12",
        PYTORCH3D,
        "numpy",
        "pillow",
        "tqdm",
        "imageio",
        "matplotlib",
        "pyyaml",
        "iopath",
        # Structured configs (dvr_plugin.engine.config); 2.3 is the first with Union[str, int].
        "omegaconf>=2.3",
    ],
    extras_require={
        # Kept as an alias: PyTorch3D is now a dependency of the package itself.
        "pytorch3d": [PYTORCH3D],
        "implicitron": IMPLICITRON,
        # The fused decoder kernel (dvr_plugin.accel.fused_decoder); torch's CUDA wheels for
        # Linux already bring it.
        "fused": ["triton"],
        "dev": ["pytest", "pytest-timeout", "ruff", "build", "import-linter"],
    },
    entry_points={"console_scripts": ["dvr=dvr_plugin.cli.main:main"]},
    keywords=["pytorch3d", "differentiable rendering", "implicit surfaces", "3d reconstruction"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
