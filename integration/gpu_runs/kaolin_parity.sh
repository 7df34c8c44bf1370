#!/usr/bin/env bash
# One GPU: Kaolin's chamfer_distance, f_score, point_to_mesh_distance and check_sign against this
# project's native Kaolin-convention metrics (dvr_plugin/metrics/kaolin_compat.py); the table and
# the raw numbers go to $OUT/kaolin_parity (kaolin_parity.md, kaolin_parity.json).
#
# Kaolin is not installed: its C++/CUDA sources for these four functions and the Python modules
# that call them are read from .kaolin_src (a subset of one Kaolin commit, named in
# .kaolin_src/KAOLIN_COMMIT, left unmodified; a full clone of
# https://github.com/NVIDIAGameWorks/kaolin works too, as .kaolin_src or KAOLIN_SRC). This script
#   1. assembles a minimal `kaolin` package in $KAOLIN_PKG (default /tmp/kaolin_subset): Kaolin's
#      metrics/pointcloud.py, metrics/trianglemesh.py, ops/mesh/mesh.py, ops/mesh/check_sign.py,
#      with __init__.py files of its own that import nothing else (Kaolin's would pull in the
#      whole library and its optional dependencies);
#   2. builds `kaolin._C` from Kaolin's sources with a bindings file of its own that exposes
#      the same submodules Kaolin's Python code calls (_C.metrics.sided_distance_*,
#      _C.metrics.unbatched_triangle_distance_*, _C.ops.mesh.unbatched_mesh_intersection_cuda,
#      _C.ops.mesh.TriangleHash); torch.utils.cpp_extension, TORCH_CUDA_ARCH_LIST=9.0, ninja
#      when present (setuptools' serial build otherwise), MAX_JOBS=16;
#   3. runs the project's own tests against Kaolin (tests/test_metrics_kaolin.py, KAOLIN_TESTS=0
#      skips them), then `python -m integration.kaolin_parity`.
#
#   source .gpubundle/activate && DVR_DATA_DIR=$PWD/.gpudata bash integration/gpu_runs/kaolin_parity.sh
#   (device call: carry [".gpubundle", ".gpudeps", ".gpudata", ".kaolin_src"])
#
# CPU=1 builds without CUDA (Kaolin's CUDA entry points then raise) and compares on the CPU: a
# check of this glue where no GPU is present. BUILD_ONLY=1 stops after the import check; PYTHON
# picks the interpreter (default: python).
set -euo pipefail
CPU=${CPU:-0}
# a packed PyTorch3D for the GPU machine, where none is installed
[[ $CPU != 1 && -f .gpubundle/activate ]] && source .gpubundle/activate
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
OUT=${OUT:-outputs/gpu_runs}
SRC=${KAOLIN_SRC:-$PWD/.kaolin_src}
PKG=${KAOLIN_PKG:-/tmp/kaolin_subset}
BUILD=${KAOLIN_BUILD:-/tmp/kaolin_subset_build}
PY=${PYTHON:-python}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# where nvcc is a wrapper script outside the toolkit, PyTorch would guess the wrong CUDA_HOME
if [[ $CPU != 1 && -z ${CUDA_HOME:-} && -f /usr/local/cuda/include/cuda.h ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/kaolin_parity"
OUT=$(cd "$OUT" && pwd)
# .kaolin_src (the subset, with KAOLIN_COMMIT) or a full Kaolin checkout (KAOLIN_SRC=path)
if [[ -f $SRC/KAOLIN_COMMIT ]]; then
  COMMIT=$(head -n1 "$SRC/KAOLIN_COMMIT")
elif git -C "$SRC" rev-parse HEAD >/dev/null 2>&1; then
  COMMIT=$(git -C "$SRC" rev-parse HEAD)
else
  echo "no Kaolin sources at $SRC: clone https://github.com/NVIDIAGameWorks/kaolin there" \
    "(or set KAOLIN_SRC to a checkout)" >&2
  exit 1
fi
stamp() { printf '[%5ds] %s\n' "$SECONDS" "$*"; }

stamp "Kaolin sources: $SRC at $COMMIT"
"$PY" - <<'EOF'
import shutil, torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU: {gpu}")
print(f"CUDA_HOME {CUDA_HOME}, nvcc {shutil.which('nvcc')}, ninja {is_ninja_available()}")
EOF

# 1. The minimal package: Kaolin's four Python modules, our own __init__ files.
rm -rf "$PKG/kaolin"
mkdir -p "$PKG/kaolin/metrics" "$PKG/kaolin/ops/mesh" "$BUILD/src"
cp "$SRC/kaolin/metrics/pointcloud.py" "$SRC/kaolin/metrics/trianglemesh.py" "$PKG/kaolin/metrics/"
cp "$SRC/kaolin/ops/mesh/mesh.py" "$SRC/kaolin/ops/mesh/check_sign.py" "$PKG/kaolin/ops/mesh/"
cat >"$PKG/kaolin/__init__.py" <<EOF
"""The part of Kaolin ($COMMIT) behind four metrics, built by kaolin_parity.sh; imports nothing."""

__version__ = "subset"
__commit__ = "$COMMIT"
EOF
echo '"""kaolin.metrics.pointcloud and kaolin.metrics.trianglemesh only."""' >"$PKG/kaolin/metrics/__init__.py"
echo '"""kaolin.ops.mesh only."""' >"$PKG/kaolin/ops/__init__.py"
cat >"$PKG/kaolin/ops/mesh/__init__.py" <<'EOF'
"""kaolin.ops.mesh from mesh.py and check_sign.py only (not trianglemesh.py, tetmesh.py)."""

from .check_sign import check_sign  # noqa: F401
from .mesh import *  # noqa: F401,F403
EOF
stamp "package assembled in $PKG/kaolin"

# 2. kaolin._C from Kaolin's sources and our bindings.
cat >"$BUILD/src/subset_bindings.cpp" <<'EOF'
// The submodules and names of Kaolin's _C that metrics/pointcloud.py, metrics/trianglemesh.py
// and ops/mesh/check_sign.py call; the functions themselves are Kaolin's, unmodified.
#include <torch/extension.h>

#include "metrics/sided_distance.h"
#include "metrics/unbatched_triangle_distance.h"
#include "ops/mesh/mesh_intersection.h"
#include "ops/mesh/triangle_hash.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  auto metrics = m.def_submodule("metrics");
  metrics.def("sided_distance_forward_cuda", &kaolin::sided_distance_forward_cuda);
  metrics.def("sided_distance_backward_cuda", &kaolin::sided_distance_backward_cuda);
  metrics.def("unbatched_triangle_distance_forward_cuda",
              &kaolin::unbatched_triangle_distance_forward_cuda);
  metrics.def("unbatched_triangle_distance_backward_cuda",
              &kaolin::unbatched_triangle_distance_backward_cuda);
  auto mesh = m.def_submodule("ops").def_submodule("mesh");
  mesh.def("unbatched_mesh_intersection_cuda", &kaolin::unbatched_mesh_intersection_cuda);
  pybind11::class_<kaolin::TriangleHash>(mesh, "TriangleHash")
      .def(pybind11::init<at::Tensor, int>(), pybind11::arg("triangles"),
           pybind11::arg("resolution"))
      .def("query", &kaolin::TriangleHash::query, pybind11::arg("points"));
}
EOF
if [[ $CPU != 1 ]]; then
  # ATen's CUDA headers include cuBLAS / cuSPARSE / cuSOLVER headers; where the toolkit lacks
  # them, use those of the pip wheels (nvidia/*/include) that PyTorch's CUDA build depends on.
  CUDA_INC=$("$PY" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')")/include
  if [[ ! -f $CUDA_INC/cusparse.h ]]; then
    NV_INC=$("$PY" -c "
import glob, os, nvidia
names = ('cusparse.h', 'cublas_v2.h', 'cublasLt.h', 'cusolverDn.h')
dirs = sorted({os.path.dirname(h) for r in nvidia.__path__ for n in names
               for h in glob.glob(f'{r}/*/include/{n}')})
print(':'.join(dirs))" 2>/dev/null || true)
    [[ -n $NV_INC ]] && export CPATH=$NV_INC${CPATH:+:$CPATH}
    stamp "no cusparse.h in $CUDA_INC; CPATH += ${NV_INC:-(no nvidia wheels found)}"
  fi
fi
stamp "building kaolin._C (CPU=$CPU, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
# the compiler's output (pybind11's visibility warnings, mostly) goes to build.log
LOG=$OUT/kaolin_parity/build.log
if ! (cd "$BUILD" && KAOLIN_CSRC="$SRC/kaolin/csrc" PKG="$PKG" BUILD="$BUILD" CPU="$CPU" "$PY" - <<'EOF'
import os, time
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, is_ninja_available

csrc, cpu = os.environ["KAOLIN_CSRC"], os.environ["CPU"] == "1"
names = ["metrics/sided_distance", "metrics/unbatched_triangle_distance", "ops/mesh/mesh_intersection"]
sources = [os.path.join(os.environ["BUILD"], "src", "subset_bindings.cpp")]
sources += [os.path.join(csrc, f"{n}.cpp") for n in names + ["ops/mesh/triangle_hash"]]
args = dict(include_dirs=[csrc], extra_compile_args={"cxx": ["-O3"]})
if cpu:
    ext = CppExtension("kaolin._C", sources, **args)
else:
    sources += [os.path.join(csrc, f"{n}_cuda.cu") for n in names]
    args["define_macros"] = [("WITH_CUDA", None), ("THRUST_IGNORE_CUB_VERSION_CHECK", None)]
    args["extra_compile_args"]["nvcc"] = ["-O3", "-DWITH_CUDA", "-DTHRUST_IGNORE_CUB_VERSION_CHECK"]
    ext = CUDAExtension("kaolin._C", sources, **args)
print(f"[build] {len(sources)} sources, ninja: {is_ninja_available()}", flush=True)
start = time.perf_counter()
setup(
    name="kaolin-subset",
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=is_ninja_available())},
    script_args=["-q", "build_ext", "--build-lib", os.environ["PKG"], "--build-temp", os.environ["BUILD"]],
)
print(f"[build] compiled and linked in {time.perf_counter() - start:.1f} s", flush=True)
EOF
) >"$LOG" 2>&1; then
  tail -n 60 "$LOG"
  stamp "build failed (whole log: $LOG)"
  exit 1
fi
grep '^\[build\]' "$LOG" || true
if [[ -f $BUILD/.ninja_log ]]; then # the slowest compiles of the last build (ms columns)
  awk 'NR > 1 { printf "[build] %6.1f s %s\n", ($2 - $1) / 1000, $4 }' "$BUILD/.ninja_log" |
    sort -k2 -nr | head -n 4 || true
fi
stamp "built: $(ls "$PKG"/kaolin/_C*.so)"
export PYTHONPATH=$PWD:$PKG${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "
import kaolin, kaolin.metrics.pointcloud as pc, kaolin.metrics.trianglemesh as tm, kaolin.ops.mesh as om
print('  imported', kaolin.__file__, kaolin.__commit__)
print('  ', pc.chamfer_distance, pc.f_score, tm.point_to_mesh_distance, om.check_sign, sep='\n   ')
"
stamp "kaolin subset importable"
[[ ${BUILD_ONLY:-0} == 1 ]] && exit 0

# 3. The project's tests against Kaolin, then the parity table.
if [[ ${KAOLIN_TESTS:-1} == 1 && $CPU != 1 ]]; then
  "$PY" -m pytest -q -p no:cacheprovider tests/test_metrics_kaolin.py || echo "(kaolin tests failed; going on)"
  stamp "tests/test_metrics_kaolin.py done"
fi
DEVICE=cuda
[[ $CPU == 1 ]] && DEVICE=cpu
"$PY" -m integration.kaolin_parity --device "$DEVICE" --reference kaolin --out "$OUT/kaolin_parity" \
  --kaolin-commit "$COMMIT" ${PARITY_ARGS:-}
stamp "done: $OUT/kaolin_parity"
