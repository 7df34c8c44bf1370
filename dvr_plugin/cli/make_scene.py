"""
The ``dvr make-scene`` subcommand: a mesh rendered as a DTU-style capture with exact ground truth
(:func:`dvr_plugin.data.dtu_like.make_dtu_like_scene`).

``dvr_plugin.cli`` wires it in with ``add_make_scene_parser(commands)``.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

from .arguments import add_new_folder_option, add_quiet_option, add_supersample_option
from .fit_commands import clean_errors

EPILOG = """\
examples:
  dvr make-scene ../shared/data/meshes/cow.obj --out scenes/cow_dtu --front-axis=-z
  dvr make-scene ../shared/data/meshes/cow.obj --out scenes/cow_studio --lighting studio \\
      --front-axis=-z
  dvr make-scene teapot.obj --out scenes/teapot --image-size 150 200 --views 0-48:4 \\
      --shininess 64 --specular 0.8 --device cuda

Writes OUT/image/000000.png..., OUT/mask/000.png..., OUT/cameras_sphere.npz (and an identical
cameras.npz: world_mat_i projects world points into these images, scale_mat_i maps the unit
sphere to world), OUT/gt_mesh.ply (world units: DTU millimetres for the default rig) and
OUT/scene.json (frame, units, placement, lighting, seed). Load it with `dvr fit --format dtu`
or dvr_plugin.data.load_dtu; score a fit with
  dvr eval CHECKPOINT --gt OUT/gt_mesh.ply --out REPORT
"""


def parse_views(tokens: Optional[list[str]]) -> Optional[list[int]]:
    """
    Camera numbers from ``--views`` tokens: integers, comma lists and ranges ``a-b`` (inclusive)
    or ``a-b:step``; ``None`` when not given.
    """
    if not tokens:
        return None
    views: list[int] = []
    for token in tokens:
        for part in token.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    span, _, step = part.partition(":")
                    first, last = (int(x) for x in span.split("-"))
                    if last < first:
                        raise ValueError
                    views.extend(range(first, last + 1, int(step) if step else 1))
                else:
                    views.append(int(part))
            except ValueError:
                raise ValueError(
                    f"--views takes numbers, comma lists and ranges a-b or a-b:step; got {part!r}."
                ) from None
    return views


def _add_height_width_option(
    parser: argparse.ArgumentParser, flag: str, *, default: tuple[int, int], help: str
) -> None:
    """``flag H W``: an image size of two ints, height first."""
    parser.add_argument(flag, type=int, nargs=2, default=default, metavar=("H", "W"), help=help)


def add_make_scene_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``make-scene``: render a mesh as a DTU-like capture with exact ground truth."""
    parser = subparsers.add_parser(
        "make-scene",
        help="render a mesh as a DTU-style capture (IDR/NeuS layout) with exact ground truth",
        description=(
            "Render a closed mesh through the cameras of a DTU cameras file (default: the 49\n"
            "cameras of DTU scan 24) with a point light at each camera, Phong / Blinn-Phong\n"
            "highlights, its texture (or a seeded procedural one) and real photographs behind\n"
            "it; or, with --lighting studio, view-independent shading on a plain background.\n"
            "Writes images, masks and cameras in the IDR/NeuS layout plus the ground-truth\n"
            "mesh in world units."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mesh", help="a closed mesh (.obj with its .mtl texture, or .ply)")
    add_new_folder_option(parser)
    parser.add_argument("--lighting", choices=("dtu", "studio"), default="dtu")
    _add_height_width_option(
        parser,
        "--image-size",
        default=(300, 400),
        help="output image size (the cameras' aspect ratio; default 300 400)",
    )
    parser.add_argument("--shininess", type=float, default=32.0, help="highlight exponent")
    parser.add_argument("--specular", type=float, default=0.5, help="highlight strength k_s")
    parser.add_argument("--ambient", type=float, default=None, help="k_a (default 0.2 / 0.5)")
    parser.add_argument("--diffuse", type=float, default=None, help="k_d (default 0.8 / 0.5)")
    parser.add_argument(
        "--specular-model",
        choices=("blinn", "phong"),
        default="blinn",
        help="(n.h)^s (blinn, default) or (r.v)^s (phong)",
    )
    parser.add_argument(
        "--falloff", action="store_true", help="inverse-square falloff of the camera lights"
    )
    parser.add_argument(
        "--background",
        default=None,
        help="dtu (DTU scan 24 photographs; default for --lighting dtu), white (default for "
        "studio), black, grey, #rrggbb, r,g,b, an image or a folder of images",
    )
    parser.add_argument(
        "--cameras",
        default=None,
        help="a DTU cameras file (world_mat_i, scale_mat_i); "
        "default: DTU scan 24 in the shared data",
    )
    _add_height_width_option(
        parser,
        "--camera-image-size",
        default=(1200, 1600),
        help="the image size the cameras file's world_mat_i project into (default 1200 1600)",
    )
    parser.add_argument(
        "--views",
        nargs="+",
        default=None,
        metavar="V",
        help="camera numbers: 0 4 8, 0,4,8, 0-48 or 0-48:4 (default: all)",
    )
    parser.add_argument(
        "--radius-fraction",
        type=float,
        default=None,
        help="bounding-sphere radius / scale_mat radius (default: as large as fits every "
        "image, at most 0.8)",
    )
    parser.add_argument(
        "--up-axis",
        default="+y",
        help="the mesh's up axis: +x, -x, +y, -y, +z, -z (default +y; "
        "write a negative one as --up-axis=-z)",
    )
    parser.add_argument(
        "--front-axis",
        default="+z",
        help="the mesh's front axis, turned to the cameras (default +z; the cow: --front-axis=-z)",
    )
    parser.add_argument("--yaw", type=float, default=0.0, help="turn about up (degrees)")
    parser.add_argument(
        "--procedural-texture",
        action="store_true",
        help="use the seeded procedural texture even when the mesh has one",
    )
    parser.add_argument(
        "--soft-masks", action="store_true", help="anti-aliased masks (coverage) not 0/255"
    )
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian image noise (std)")
    parser.add_argument(
        "--pose-noise",
        type=float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("DEGREES", "DISTANCE"),
        help="a calibration error: the cameras files get every pose turned by DEGREES and "
        "moved by DISTANCE (unit-sphere units); exact poses in cameras_exact.npz",
    )
    add_supersample_option(parser)
    parser.add_argument("--seed", type=int, default=0, help="texture and noise seed")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    add_quiet_option(parser)
    parser.set_defaults(run=run_make_scene)
    return parser


@clean_errors
def run_make_scene(args: argparse.Namespace) -> int:
    """``dvr make-scene``."""
    from ..data.dtu_like import make_dtu_like_scene

    report = make_dtu_like_scene(
        args.mesh,
        args.out,
        image_size=tuple(args.image_size),
        lighting=args.lighting,
        shininess=args.shininess,
        specular=args.specular,
        ambient=args.ambient,
        diffuse=args.diffuse,
        specular_model=args.specular_model,
        falloff=args.falloff,
        background=args.background,
        cameras_path=args.cameras,
        camera_image_size=tuple(args.camera_image_size),
        views=parse_views(args.views),
        radius_fraction=args.radius_fraction,
        up_axis=args.up_axis,
        front_axis=args.front_axis,
        yaw=args.yaw,
        texture="procedural" if args.procedural_texture else "auto",
        soft_masks=args.soft_masks,
        noise=args.noise,
        pose_noise=tuple(args.pose_noise),
        supersample=args.supersample,
        device=args.device,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    height, width = report["image_size"]
    print(
        f"wrote {len(report['views'])} views of {height}x{width} ({args.lighting} lighting) to "
        f"{args.out} in {report['seconds']:.1f} s; ground truth {report['gt_mesh']} "
        f"({report['units']}); object radius {report['placement']['radius_fraction']:.3f} x "
        "the scale_mat radius"
    )
    if report["views_touching_border"]:
        crossing = report["views_touching_border"]
        print(f"note: the object crosses the image border in views {crossing}")
    return 0
