"""
Command-line options that several ``dvr`` subcommands (and ``python -m integration.compare``)
share. Each option is defined here once, with its flag, default and help text; a subcommand adds
it with one call, so every command that has the option shows the same words for it.

Options that look alike but mean something else in one command (``--out`` of ``dvr mesh`` is a
mesh file; ``--device`` of ``dvr render`` defaults to ``auto`` with its own wording) stay with
that command.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``KEY=VALUE ...`` config overrides (dotted keys of the fit config)."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def add_output_folder_option(
    parser: argparse.ArgumentParser, *, default: Optional[str] = None
) -> None:
    """``--out``, the folder a command writes into: required unless ``default`` is given."""
    parser.add_argument("--out", required=default is None, default=default, help="output folder")


def add_new_folder_option(parser: argparse.ArgumentParser) -> None:
    """``--out`` (required) of the commands that write a data set into a new or empty folder."""
    parser.add_argument("--out", required=True, help="a new or empty folder")


def add_report_folder_option(parser: argparse.ArgumentParser) -> None:
    """``--out`` (required) of the commands that write an evaluation report."""
    parser.add_argument("--out", required=True, help="report folder")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: ``auto`` (the default: CUDA when present), ``cpu`` or ``cuda``."""
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def add_config_device_option(parser: argparse.ArgumentParser) -> None:
    """
    ``--device`` of the commands driven by a fit config: ``None`` (not given) leaves the config's
    ``device`` (``auto`` unless it says otherwise); a value becomes the override ``device=...``.
    """
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")


def add_device_if_present_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: ``cpu`` or ``cuda``; ``None`` (not given) means CUDA when present."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar on stderr."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_image_size_option(parser: argparse.ArgumentParser, *, default: int) -> None:
    """``--image-size``: the side of square renders in pixels."""
    parser.add_argument("--image-size", type=int, default=default, help="pixels per side")


def add_orbit_frames_option(parser: argparse.ArgumentParser, *, default: int) -> None:
    """``--frames``: how many frames an orbit (turntable) around the object has."""
    parser.add_argument("--frames", type=int, default=default, help="orbit frames")


def add_marching_steps_option(parser: argparse.ArgumentParser) -> None:
    """``--steps``: the marching steps per ray of the DVR renderer (default 128)."""
    parser.add_argument("--steps", type=int, default=128, help="marching steps per ray")


def add_supersample_option(parser: argparse.ArgumentParser) -> None:
    """``--supersample``: the anti-aliasing factor of the PyTorch3D mesh renders (default 2)."""
    parser.add_argument("--supersample", type=int, default=2, help="anti-aliasing factor")


def option_value(args: argparse.Namespace, flag: str) -> Any:
    """The parsed value of the option ``flag`` (``"--image-size"`` reads ``args.image_size``)."""
    return getattr(args, flag.lstrip("-").replace("-", "_"))
