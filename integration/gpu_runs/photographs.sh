#!/usr/bin/env bash
# Real-capture recipes on one GPU: DTU-like scenes generated from meshes (exact ground truth,
# DTU's 49-camera rig, a light at each camera, specular highlights, photo backgrounds) and the
# real DTU scan 24 / NeRF-synthetic lego. Every fit of a stage runs at the same time on the one
# GPU with the same training-time budget, then is scored (`dvr eval --observed` where a
# ground-truth mesh exists). One table per stage in $OUT/summary.md (+ .json) and a tarball
# of the per-fit metrics and comparison grids.
#
#   bash integration/gpu_runs/photographs.sh ablation   # the candidates on the DTU-like cow
#   bash integration/gpu_runs/photographs.sh key        # the main candidates, and scan 24
#   bash integration/gpu_runs/photographs.sh sdf_ablation  # each piece of the SDF recipe taken out
#   bash integration/gpu_runs/photographs.sh cameras    # camera refinement against a known pose error
#   bash integration/gpu_runs/photographs.sh normal_weight  # the normal-smoothness weight
#   bash integration/gpu_runs/photographs.sh sampling   # patches (and the image-gradient term) or not
#   bash integration/gpu_runs/photographs.sh colour     # a hash grid in the colour head, on scan 24
#   bash integration/gpu_runs/photographs.sh volume     # the volume-rendering warm-up, on scan 24
#   bash integration/gpu_runs/photographs.sh regrowth   # after the warm-up: a kept volume term, the normal weight
#   bash integration/gpu_runs/photographs.sh psnr       # scan 24: the recipe beside larger batches, finer colour, the clock
#   bash integration/gpu_runs/photographs.sh lego       # the lego: its config, and with the DTU GPU recipe's field
#   bash integration/gpu_runs/photographs.sh recipes    # the packaged configs on every scene
#
# SMOKE=1 runs the same on the CPU at toy sizes (a check of the script, not of the method).
# ONLY="cow_dtu scan24_monosdf" runs just those fits of a stage; MAXJOBS=1 runs the fits one
# after another (each alone on the GPU, as the 5-minute recipe figures are meant); MORE="seed=1"
# adds overrides to every fit (a second seed: give it its own WORK folder).
[[ ${SMOKE:-0}${CPU:-0} == 00 && -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
set -u
STAGE=${1:-ablation}
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
D=${WORK:-/tmp/photographs}; mkdir -p "$D"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# the interpreter: PY or PYTHON, else the pinned environment of `make test` where it exists (a CPU
# run on a development machine), else the machine's python (the GPU machine with its bundle)
DEFAULT_PY=python; [[ -x .venv/bin/python ]] && DEFAULT_PY=$PWD/.venv/bin/python
PY=${PY:-${PYTHON:-$DEFAULT_PY}}
BUDGET=${BUDGET:-210}
DEVICE=cuda; SIZE="180 240"; POINTS=100000; RES=256; EXTRA=()
if [[ ${SMOKE:-0} == 1 ]]; then
  DEVICE=cpu; SIZE="24 32"; POINTS=2000; RES=32; BUDGET=${BUDGET_SMOKE:-8}
  EXTRA=(model.hidden_size=32 model.n_blocks=1 model.colour_hidden_size=16 model.colour_n_layers=1
         train.images_per_batch=1 train.rays_per_image=64 eval.validate_every=0 eval.mesh_resolution=32
         loss.eikonal_box_points=32 loss.mask_samples=8)
  VIEWS=(--views 0-48:8)
elif [[ ${CPU:-0} == 1 ]]; then  # a small CPU version: 2 fits at a time, one thread each
  DEVICE=cpu; SIZE="60 80"; POINTS=30000; RES=128; BUDGET=${BUDGET_CPU:-240}
  EXTRA=(model.hidden_size=64 model.n_blocks=3 model.colour_hidden_size=64 model.colour_n_layers=2
         train.images_per_batch=2 train.rays_per_image=512 "train.step_milestones={0: 16, 400: 32}"
         eval.mesh_resolution=128 loss.eikonal_box_points=256 loss.mask_samples=32 optim.lr=1e-3)
  ANNEAL_STEPS=${ANNEAL_STEPS:-600}; MAXJOBS=${MAXJOBS:-2}
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  VIEWS=()
else
  VIEWS=()
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1
fi
# A training-time budget (GPU: every fit of a stage shares the GPU for the same time) or, with
# ITERS, a fixed number of steps (CPU runs, where other work on the machine would skew a budget).
if [[ -n ${ITERS:-} ]]; then LENGTH=(train.iterations=$ITERS); else LENGTH=(train.time_budget_s=$BUDGET train.iterations=20000); fi
COMMON=("${LENGTH[@]}" eval.turntable_frames=0 eval.validate_every=0)

scene() {  # $1 = mesh name, $2 = lighting, extra make-scene flags after (SUFFIX=_x: folder name)
  local name=$1 lighting=$2; shift 2
  local dir=$D/scenes/${name}_$lighting${SUFFIX:-}
  mkdir -p "$D/scenes"
  [[ -f $dir/cameras.npz || -f $dir/cameras_sphere.npz ]] && return
  $PY -m dvr_plugin.cli make-scene "$DATA/meshes/$name.obj" --out "$dir" \
    --lighting "$lighting" --image-size $SIZE --device ${SCENE_DEVICE:-cpu} --force "${VIEWS[@]}" "$@" \
    > "$dir.log" 2>&1 || { echo "make-scene $name $lighting failed"; tail -5 "$dir.log"; }
}

fit() {  # $1 = run name, $2 = data folder, $3 = format, $4 = ground-truth mesh or -, then overrides
  # (CONFIG=<name> fit ... picks another packaged config than dtu)
  local name=$1 data=$2 format=$3 gt=$4; shift 4
  [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && return  # ONLY="a b": just those fits
  rm -rf "$D/$name"
  $PY -m dvr_plugin.cli fit --config "${CONFIG:-dtu}" --data "$data" --format "$format" --out "$D/$name" \
    --device $DEVICE --quiet "${COMMON[@]}" "${EXTRA[@]}" "$@" ${MORE:-} > "$D/$name.log" 2>&1
  if [[ $gt != - && -f $D/$name/checkpoint.pt ]]; then
    $PY -m dvr_plugin.cli eval "$D/$name/checkpoint.pt" --gt "$gt" --observed --no-iou \
      --out "$D/$name/eval" --device $DEVICE --points $POINTS --resolution $RES >> "$D/$name.log" 2>&1
  fi
  echo "== $name"; tail -4 "$D/$name.log"
}

VIEWDEP=(model.colour=view_dependent)
ANNEAL=(model.fourier_anneal_steps=${ANNEAL_STEPS:-1500} model.geometric_init_radius=0.3)
MAXJOBS=${MAXJOBS:-16}
slot() { while (( $(jobs -rp | wc -l) >= MAXJOBS )); do wait -n; done; }  # at most MAXJOBS fits at once
SDF=(model.field_type=sdf loss.eikonal=0.1 loss.mask=100 loss.freespace=0 loss.occupancy=0)

case $STAGE in
ablation)
  scene cow dtu --front-axis=-z & scene cow studio --front-axis=-z & wait
  GT=$D/scenes/cow_dtu/gt_mesh.ply
  slot; fit studio_current "$D/scenes/cow_studio" dtu "$D/scenes/cow_studio/gt_mesh.ply" data.downscale=1 &
  slot; fit dtu_current "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 &
  slot; fit dtu_viewdep "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${VIEWDEP[@]}" &
  slot; fit dtu_viewdep_anneal "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${VIEWDEP[@]}" "${ANNEAL[@]}" &
  slot; fit dtu_sdf "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${VIEWDEP[@]}" "${ANNEAL[@]}" "${SDF[@]}" &
  wait
  RUNS="studio_current dtu_current dtu_viewdep dtu_viewdep_anneal dtu_sdf"
  ;;
key)  # the main candidates on the DTU-like cow, and the view-dependent head on DTU scan 24
  scene cow dtu --front-axis=-z
  GT=$D/scenes/cow_dtu/gt_mesh.ply
  slot; fit dtu_current "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 &
  slot; fit dtu_viewdep "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${VIEWDEP[@]}" &
  slot; fit dtu_sdf "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${VIEWDEP[@]}" "${ANNEAL[@]}" "${SDF[@]}" &
  slot; fit scan24_viewdep "$DATA/dtu_scan24_384/scan24" monosdf - "${VIEWDEP[@]}" &
  wait
  RUNS="dtu_current dtu_viewdep dtu_sdf scan24_viewdep"
  ;;
sdf_ablation)  # the pieces of the SDF recipe, each taken out in turn, on the DTU-like cow
  scene cow dtu --front-axis=-z
  GT=$D/scenes/cow_dtu/gt_mesh.ply
  FULL=("${VIEWDEP[@]}" "${ANNEAL[@]}" "${SDF[@]}")
  slot; fit sdf_full "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${FULL[@]}" &
  slot; fit sdf_no_viewdep "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${FULL[@]}" model.colour=texture &
  slot; fit sdf_no_anneal "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${FULL[@]}" model.fourier_anneal_steps=0 &
  slot; fit sdf_no_mask "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 "${FULL[@]}" loss.mask=0 loss.freespace=1 loss.occupancy=1 &
  wait
  RUNS="sdf_full sdf_no_viewdep sdf_no_anneal sdf_no_mask"
  ;;
cameras)  # camera refinement: the DTU-like cow with a known calibration error (POSE_NOISE)
  scene cow dtu --front-axis=-z
  SUFFIX=_posenoise scene cow dtu --front-axis=-z --pose-noise ${POSE_NOISE:-0.5 0.005}
  GT=$D/scenes/cow_dtu/gt_mesh.ply
  NOISY=$D/scenes/cow_dtu_posenoise
  slot; fit cam_exact "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 &
  slot; fit cam_noisy "$NOISY" dtu "$GT" data.downscale=1 &
  FREE=(train.camera_anchor=false)  # the corrections' common motion left free, as before the anchor
  slot; fit cam_noisy_refined "$NOISY" dtu "$GT" data.downscale=1 train.refine_cameras=true "${FREE[@]}" &
  LATE=(train.refine_cameras=true train.camera_refine_after=${REFINE_AFTER:-1500})
  slot; fit cam_noisy_refined_late "$NOISY" dtu "$GT" data.downscale=1 "${LATE[@]}" "${FREE[@]}" &
  slot; fit cam_noisy_refined_late_slow "$NOISY" dtu "$GT" data.downscale=1 "${LATE[@]}" train.camera_lr=2e-5 "${FREE[@]}" &
  # the same two with the common rigid motion of the corrections taken out after every step
  slot; fit cam_noisy_refined_anchored "$NOISY" dtu "$GT" data.downscale=1 train.refine_cameras=true train.camera_anchor=true &
  slot; fit cam_noisy_refined_late_slow_anchored "$NOISY" dtu "$GT" data.downscale=1 "${LATE[@]}" train.camera_lr=2e-5 train.camera_anchor=true &
  wait
  for r in cam_noisy cam_noisy_refined cam_noisy_refined_late cam_noisy_refined_late_slow \
      cam_noisy_refined_anchored cam_noisy_refined_late_slow_anchored; do  # the poses against the exact ones
    [[ -f $D/$r/checkpoint.pt ]] && $PY -m integration.gpu_runs.camera_error "$D/$r/checkpoint.pt" \
      "$NOISY" --out "$D/$r/camera_error.json" > "$D/$r.camera_error.log" 2>&1 \
      && echo "== $r camera error: $(tr -d '\n ' < "$D/$r/camera_error.json" | head -c 400)"
  done
  RUNS="cam_exact cam_noisy cam_noisy_refined cam_noisy_refined_late cam_noisy_refined_late_slow"
  RUNS+=" cam_noisy_refined_anchored cam_noisy_refined_late_slow_anchored"
  ;;
normal_weight)  # the normal-smoothness weight of the recipe (0.05) taken out and raised
  scene cow dtu --front-axis=-z
  GT=$D/scenes/cow_dtu/gt_mesh.ply
  slot; fit normal_0 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 loss.normal=0 &
  slot; fit normal_0.05 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 &
  slot; fit normal_0.2 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 loss.normal=0.2 &
  slot; fit normal_0.5 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 loss.normal=0.5 &
  # the spread: a second seed of the packaged weight and of 0.2
  slot; fit normal_0.05_seed1 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 seed=1 &
  slot; fit normal_0.2_seed1 "$D/scenes/cow_dtu" dtu "$GT" data.downscale=1 loss.normal=0.2 seed=1 &
  # a second mesh
  [[ -z ${ONLY:-} || " $ONLY " == *teapot* ]] && scene teapot dtu
  TEAPOT=$D/scenes/teapot_dtu
  slot; fit normal_0.05_teapot "$TEAPOT" dtu "$TEAPOT/gt_mesh.ply" data.downscale=1 &
  slot; fit normal_0.2_teapot "$TEAPOT" dtu "$TEAPOT/gt_mesh.ply" data.downscale=1 loss.normal=0.2 &
  wait
  RUNS="normal_0 normal_0.05 normal_0.2 normal_0.5 normal_0.05_seed1 normal_0.2_seed1"
  RUNS+=" normal_0.05_teapot normal_0.2_teapot"
  ;;
sampling)  # which pixels a step trains on: DVR's 2x2 patches (with the image-gradient term) or not
  scene cow dtu --front-axis=-z & scene teapot dtu & wait
  for mesh in cow teapot; do
    S=$D/scenes/${mesh}_dtu
    slot; fit ${mesh}_patch_gradient "$S" dtu "$S/gt_mesh.ply" data.downscale=1 &
    slot; fit ${mesh}_patch "$S" dtu "$S/gt_mesh.ply" data.downscale=1 loss.image_gradient=0 &
    slot; fit ${mesh}_foreground "$S" dtu "$S/gt_mesh.ply" data.downscale=1 loss.image_gradient=0 \
      train.sampling=foreground_balanced train.foreground_fraction=0.5 &
    slot; fit ${mesh}_uniform "$S" dtu "$S/gt_mesh.ply" data.downscale=1 loss.image_gradient=0 train.sampling=uniform &
    slot; fit ${mesh}_foreground_patch_gradient "$S" dtu "$S/gt_mesh.ply" data.downscale=1 \
      train.sampling=foreground_balanced_patch train.foreground_fraction=0.5 &
  done
  wait
  RUNS=""
  for mesh in cow teapot; do
    RUNS+=" ${mesh}_patch_gradient ${mesh}_patch ${mesh}_foreground ${mesh}_uniform ${mesh}_foreground_patch_gradient"
  done
  ;;
colour)  # the colour head's own hash grid of the surface point (fine texture), on scan 24
  GRID=(model.colour_point_grid=true optim.encoding_lr=${GRID_LR:-1e-2})
  slot; fit scan24_monosdf "$DATA/dtu_scan24_384/scan24" monosdf - model.colour_point_grid=false &
  slot; fit scan24_monosdf_grid "$DATA/dtu_scan24_384/scan24" monosdf - "${GRID[@]}" &
  slot; fit scan24_monosdf_grid_slow "$DATA/dtu_scan24_384/scan24" monosdf - model.colour_point_grid=true optim.encoding_lr=3e-3 &
  slot; fit scan24_idr_grid "$DATA/dtu_scan24_neus_400/scan24" dtu - "${GRID[@]}" &
  wait
  RUNS="scan24_monosdf scan24_monosdf_grid scan24_monosdf_grid_slow scan24_idr_grid"
  ;;
volume)  # the volume-rendering warm-up (loss.volume) on scan 24, on the recipe and the hash-grid SDF
  HASH=(model.encoding=hash_grid optim.encoding_lr=1e-2 model.hash_grid.max_resolution=256 loss.normal=0.5)
  VOLUME=(loss.volume=${VOLUME_WEIGHT:-4} loss.volume_until=${VOLUME_UNTIL:-2000})
  S24=$DATA/dtu_scan24_384/scan24
  slot; fit scan24_hash "$S24" monosdf - "${HASH[@]}" &
  slot; fit scan24_hash_volume "$S24" monosdf - "${HASH[@]}" "${VOLUME[@]}" &
  slot; fit scan24_volume "$S24" monosdf - "${VOLUME[@]}" &
  slot; fit scan24_hash_volume_kept "$S24" monosdf - "${HASH[@]}" loss.volume=2 loss.volume_until=0 loss.volume_sharpness_start=50 &
  wait
  RUNS="scan24_hash scan24_hash_volume scan24_volume scan24_hash_volume_kept"
  ;;
regrowth)  # scan 24 once the warm-up has ended (UNTIL, default 2000): the packaged recipe, the
  # volume term kept at a tenth of its weight, the normal weight at 0.2 instead of 0.5
  S24=$DATA/dtu_scan24_384/scan24
  ENDED=(loss.volume_until=${UNTIL:-2000})
  slot; fit scan24_ended "$S24" monosdf - "${ENDED[@]}" &
  slot; fit scan24_ended_floor "$S24" monosdf - "${ENDED[@]}" loss.volume_floor=0.1 &
  slot; fit scan24_ended_normal "$S24" monosdf - "${ENDED[@]}" loss.normal=0.2 &
  wait
  RUNS="scan24_ended scan24_ended_floor scan24_ended_normal"
  ;;
psnr)  # scan 24 (MonoSDF layout): the packaged GPU recipe (4 images x 4096 rays per step) beside
  # other batches (the step is bound by kernel launches, so a larger batch costs less than its
  # size; this stage measures what it buys): the recipe's earlier 2048 rays per image, 8192 per
  # image, and twice the images; a colour grid, as fine as the geometry's or finer; and camera
  # refinement after the coarse shape (the pixels the render misses lie within 2 px of the
  # masks' edges: a silhouette off by a pixel, docs/real_data.md)
  S24=$DATA/dtu_scan24_384/scan24
  CGRID=(model.colour_point_grid=true)
  slot; fit scan24_recipe "$S24" monosdf - &
  slot; fit scan24_rays2048 "$S24" monosdf - train.rays_per_image=2048 &
  slot; fit scan24_rays8192 "$S24" monosdf - train.rays_per_image=8192 &
  slot; fit scan24_images8 "$S24" monosdf - train.images_per_batch=8 &
  slot; fit scan24_colour_grid "$S24" monosdf - "${CGRID[@]}" &
  slot; fit scan24_colour_grid1024 "$S24" monosdf - "${CGRID[@]}" model.colour_grid_max_resolution=1024 &
  slot; fit scan24_cameras "$S24" monosdf - train.refine_cameras=true train.camera_refine_after=1500 train.camera_lr=2e-5 &
  # the recipe's planned 5000 steps spread over the budget (train.schedule_by_time): the
  # learning-rate decay, the marching steps and the warm-up's fade all reach their end
  slot; fit scan24_clock "$S24" monosdf - train.iterations=5000 train.schedule_by_time=true &
  # a quarter of the patches from the silhouette band (2 px either side of the masks' edges)
  slot; fit scan24_boundary "$S24" monosdf - train.boundary_fraction=0.25 &
  # the learning rates halved within the steps a 280 s run takes (about 3600-4000 on an H100;
  # the recipe's 3500 and 4500 come at or after its end)
  slot; fit scan24_lr_early "$S24" monosdf - "optim.lr_milestones=[2800,3400]" &
  # the recipe's milestones (3500 and 4500 of 5000 steps) on the clock: the rates halve at 70%
  # and 90% of the budget, whatever the card's speed (train.lr_by_time)
  slot; fit scan24_lr_clock "$S24" monosdf - train.iterations=5000 train.lr_by_time=true &
  wait
  RUNS="scan24_recipe scan24_rays2048 scan24_rays8192 scan24_images8 scan24_colour_grid"
  RUNS+=" scan24_colour_grid1024 scan24_cameras scan24_clock scan24_boundary scan24_lr_early scan24_lr_clock"
  ;;
lego)  # the NeRF-synthetic lego: its packaged config, and with the hash-grid SDF and the volume
  # warm-up of --config dtu's GPU recipe (its own normal weight and texture head kept)
  LEGO=$DATA/nerf_synthetic_lego/lego
  DTU_FIELD=(model.encoding=hash_grid model.hash_grid.max_resolution=256 optim.encoding_lr=1e-2
             loss.volume=4 loss.volume_until=5000)
  slot; CONFIG=nerf-synthetic fit lego "$LEGO" nerf-synthetic - &
  slot; CONFIG=nerf-synthetic fit lego_hash_volume "$LEGO" nerf-synthetic - "${DTU_FIELD[@]}" &
  wait
  RUNS="lego lego_hash_volume"
  ;;
recipes)
  RECIPE=(${RECIPE:-})
  wanted() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }  # a scene only where one of its fits runs
  wanted cow_dtu && scene cow dtu --front-axis=-z & wanted cow_studio && scene cow studio --front-axis=-z &
  wanted teapot_dtu && scene teapot dtu & wanted teapot_studio && scene teapot studio & wait
  slot; fit cow_dtu "$D/scenes/cow_dtu" dtu "$D/scenes/cow_dtu/gt_mesh.ply" data.downscale=1 "${RECIPE[@]}" &
  slot; fit cow_studio "$D/scenes/cow_studio" dtu "$D/scenes/cow_studio/gt_mesh.ply" data.downscale=1 "${RECIPE[@]}" &
  slot; fit teapot_dtu "$D/scenes/teapot_dtu" dtu "$D/scenes/teapot_dtu/gt_mesh.ply" data.downscale=1 "${RECIPE[@]}" &
  slot; fit teapot_studio "$D/scenes/teapot_studio" dtu "$D/scenes/teapot_studio/gt_mesh.ply" data.downscale=1 "${RECIPE[@]}" &
  slot; fit scan24_monosdf "$DATA/dtu_scan24_384/scan24" monosdf - "${RECIPE[@]}" &
  slot; fit scan24_idr "$DATA/dtu_scan24_neus_400/scan24" dtu - "${RECIPE[@]}" &
  [[ ${SMOKE:-0}${CPU:-0} == 00 ]] && { slot; CONFIG=nerf-synthetic fit lego "$DATA/nerf_synthetic_lego/lego" nerf-synthetic - & }
  wait
  RUNS="cow_dtu cow_studio teapot_dtu teapot_studio scan24_monosdf scan24_idr lego"
  ;;
*) echo "usage: photographs.sh ablation|key|sdf_ablation|cameras|normal_weight|sampling|colour|volume|regrowth|psnr|lego|recipes"; exit 2 ;;
esac

if [[ -n ${ONLY:-} ]]; then KEEP=""; for r in $RUNS; do [[ " $ONLY " == *" $r "* ]] && KEEP+="$r "; done; RUNS=$KEEP; fi
$PY -m integration.gpu_runs.summarise_fits --work "$D" --runs $RUNS --out "$OUT/summary_$STAGE"
tar -C "$D" -czf "$OUT/${STAGE}_runs.tar.gz" --exclude='*.pt' --exclude='tensorboard' --exclude='val' \
  --exclude='scenes' $(for r in $RUNS; do echo "$r" "$r.log"; done) 2>/dev/null
ls -la "$OUT"
