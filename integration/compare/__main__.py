"""
``python -m integration.compare``: run the renderer comparison on one scene.

    python -m integration.compare --scene cow --out outputs/compare_cow
    python -m integration.compare --scene dtu --data ../shared/data/dtu_scan24_384/scan24 \\
        --out outputs/compare_dtu train.iterations=2000
    python -m integration.compare --scene demo --out /tmp/cmp --device cpu --iterations 50 \\
        data.image_size=32 model.hidden_size=32
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from dvr_plugin.cli.arguments import (
    add_config_device_option,
    add_output_folder_option,
    add_overrides_argument,
)

EPILOG = """\
The scene's packaged fit configuration (dvr_plugin/configs/<scene>.yaml, with its CUDA
overrides on a GPU) sets the data, the network, the optimiser, the iterations and the rays
per step of both trained models; KEY=VALUE overrides change them for both (e.g.
train.iterations=2000 model.hidden_size=128 eval.mesh_resolution=128). Outputs in --out:
results.json, table.md, figure.png, and (unless --no-save-models) dvr_checkpoint.pt,
dvr_mesh.ply, volume_model.pt, volume_mesh.ply.
"""


def build_parser() -> argparse.ArgumentParser:
    from .harness import SCENES

    parser = argparse.ArgumentParser(
        prog="python -m integration.compare",
        description=(
            "Compare PyTorch3D's MeshRenderer on the ground-truth mesh, DVR on its fitted "
            "field, a NeRF-style ImplicitRenderer + EmissionAbsorptionRaymarcher trained the "
            "same way, and MeshRenderer on DVR's extracted mesh, on the held-out views of one "
            "scene."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_overrides_argument(parser)
    parser.add_argument("--scene", required=True, choices=SCENES, help="which scene")
    parser.add_argument(
        "--data", default=None, help="mesh file (cow) or scan folder (dtu); default: shared data"
    )
    add_output_folder_option(parser)
    add_config_device_option(parser)
    parser.add_argument("--iterations", type=int, default=None, help="= train.iterations=N")
    parser.add_argument(
        "--samples", type=int, default=64, help="samples per ray of the volume baseline"
    )
    parser.add_argument("--figure-views", type=int, default=3, help="views in the figure")
    parser.add_argument(
        "--render-chunk", type=int, default=0, help="rays per volume render call (0: auto)"
    )
    parser.add_argument("--no-save-models", action="store_true", help="skip networks / meshes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from .harness import ComparisonOptions, run_comparison, scene_config
    from .report import markdown_table

    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    try:
        config = scene_config(args.scene, data=args.data, device=args.device, overrides=overrides)
        options = ComparisonOptions(
            n_pts_per_ray=args.samples,
            figure_views=args.figure_views,
            render_chunk=args.render_chunk,
            progress=not args.quiet,
            save_models=not args.no_save_models,
        )
        results = run_comparison(config, args.out, options=options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(results), end="")
    print(
        f"wrote {args.out}/table.md, results.json, figure.png "
        f"({results['timing']['wall_seconds']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
