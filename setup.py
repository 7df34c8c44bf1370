"""Installs ``dvr-plugin`` (import name ``dvr_plugin``) with the ``dvr`` command."""

from setuptools import find_packages, setup

setup(
    name="dvr-plugin",
    version="0.1.0",
    description=(
        "Differentiable Volumetric Rendering (Niemeyer et al., CVPR 2020) as a PyTorch3D renderer"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dvr_plugin", "dvr_plugin.*", "integration", "integration.*"]),
    include_package_data=True,
    package_data={"dvr_plugin": ["configs/*.yaml"], "integration": ["configs/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pillow",
        "tqdm",
        "imageio",
        "matplotlib",
        "pyyaml",
        "iopath",
    ],
    extras_require={
        "pytorch3d": ["easypytorch3d==0.7.9.post1"],
        "implicitron": ["easypytorch3d==0.7.9.post1", "omegaconf", "hydra-core", "torchvision"],
        "dev": ["pytest", "pytest-timeout", "ruff"],
    },
    entry_points={"console_scripts": ["dvr=dvr_plugin.cli:main"]},
)
