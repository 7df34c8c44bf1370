"""
The Triton kernel behind :mod:`dvr_plugin.accel.fused_decoder` (imported only when a fused
evaluation runs, so that the package imports without Triton).

One launch evaluates the value channel of an
:class:`~dvr_plugin.fields.field.OccupancyTextureField` at a list of points. The grid is
persistent: each program walks over tiles of ``BLOCK_M`` points and, per tile,

1. loads the points `(BLOCK_M, 3)` and builds the Fourier features `(BLOCK_M, K_IN_PAD)` in
   registers (the annealing band weights from the encoding's ``progress`` buffer);
2. runs ``fc_in`` with ``tl.dot`` into the tile's activation ``act`` `(BLOCK_M, H)`;
3. per residual block: adds the block's latent projection (``fc_latent[i]`` of each point's
   code, a ``tl.dot`` over the code), ``hid = relu(fc0(relu(act)))``, ``act += fc1(hid)``;
4. the value row of ``fc_out`` on ``relu(act)`` and the analytic sphere term.

``act``, ``relu(act)`` and ``hid`` live in the program's own slice of a scratch buffer in global
memory (`(programs, 3, BLOCK_M, H)` float32, L1/L2 resident; keeping ``relu(act)`` lets every
matrix product read its operands straight from memory), so that the matrix products can be tiled
over ``BLOCK_N`` output and ``BLOCK_K`` input columns for any H; ``tl.debug_barrier`` orders the
writes of one stage before the reads of the next. Weights are read from the field's own
parameter tensors (tuples of per-block pointers), so a CUDA graph that recorded the launch
reads the current weights on every replay.

Frame and units: points in the field's frame (scene units), as the field takes them.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError as error:  # torch's CUDA wheels for Linux bring Triton; other installs may not
    raise ImportError(
        "The fused decoder kernel needs Triton: pip install 'dvr_plugin[fused]' (or triton)."
    ) from error

# what ``SPHERE`` selects: no sphere term, ``|p| - r`` (sdf), ``sharpness * (r - |p|)``
SPHERE_NONE = tl.constexpr(0)
SPHERE_SDF = tl.constexpr(1)
SPHERE_OCCUPANCY = tl.constexpr(2)


def fused_decoder_kernel(
    points_ptr,
    out_ptr,
    scratch_ptr,
    freqs_ptr,
    progress_ptr,
    latent_ptr,
    w_in_ptr,
    b_in_ptr,
    w0s,
    b0s,
    w1s,
    b1s,
    wls,
    bls,
    w_out_ptr,
    b_out_ptr,
    n_rows,
    n_tiles,
    points_per_code,
    sphere_radius,
    sphere_sharpness,
    H: tl.constexpr,
    K_IN: tl.constexpr,
    K_IN_PAD: tl.constexpr,
    N_FREQ: tl.constexpr,
    FREQ_DIV: tl.constexpr,
    ANNEAL: tl.constexpr,
    N_BLOCKS: tl.constexpr,
    LATENT_SIZE: tl.constexpr,
    SPHERE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """
    ``n_tiles`` = ceil(n_rows / BLOCK_M); ``LATENT_SIZE`` is C. Pointers: ``points``
    `(n_rows, 3)`, ``out`` `(n_rows,)`, ``scratch`` `(programs, 3, BLOCK_M, H)`, ``freqs``
    `(F,)`, ``progress`` 0-d, ``latent`` `(n_rows / points_per_code, C)`, ``w_in``
    `(H, K_IN)`, ``b_in`` `(H,)`, the per-block tuples ``w0s``/``w1s`` of `(H, H)` and
    ``b0s``/``b1s`` of `(H,)`, ``wls`` of `(H, C)` and ``bls`` of `(H,)` (empty without a
    latent), ``w_out`` `(>= 1, H)` (row 0 is read), ``b_out`` `(>= 1,)`; ``freqs``,
    ``progress`` and ``latent`` are not read when there are no bands, no annealing or no latent.
    All float32 and contiguous.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    rows_local = tl.arange(0, BLOCK_M)
    cols_n = tl.arange(0, BLOCK_N)
    cols_k = tl.arange(0, BLOCK_K)
    # the program's scratch: the residual stream, its relu (the input of the next product) and
    # the hidden activation of the current block, each (BLOCK_M, H)
    act = scratch_ptr + pid.to(tl.int64) * (3 * BLOCK_M * H)
    rel = act + BLOCK_M * H
    hid = rel + BLOCK_M * H
    tile_offsets = rows_local[:, None] * H + cols_n[None, :]

    # feature columns: [p (3), sin (3 F), cos (3 F)], the sin/cos columns ordered (coordinate,
    # band): column 3 + c F + k is sin(2^k pi p_c), column 3 + 3 F + c F + k its cosine
    col = tl.arange(0, K_IN_PAD)
    trig = col - 3
    is_cos = trig >= 3 * N_FREQ
    trig = tl.where(is_cos, trig - 3 * N_FREQ, trig)
    trig = tl.where(col >= 3, trig, 0)
    coord = tl.where(col < 3, col, trig // FREQ_DIV)
    band = trig % FREQ_DIV
    col_valid = col < K_IN
    freq = tl.load(freqs_ptr + band, mask=col_valid & (col >= 3), other=0.0)
    if ANNEAL:
        # fourier_band_weights at alpha = progress * F
        alpha = tl.load(progress_ptr) * N_FREQ
        ramp = tl.minimum(tl.maximum(alpha - band.to(tl.float32), 0.0), 1.0)
        band_weight = 0.5 * (1.0 - tl.cos(3.141592653589793 * ramp))

    tile = pid
    while tile < n_tiles:  # tiles pid, pid + programs, ...
        rows = tile * BLOCK_M + rows_local
        row_ok = rows < n_rows
        px = tl.load(points_ptr + rows * 3, mask=row_ok, other=0.0)
        py = tl.load(points_ptr + rows * 3 + 1, mask=row_ok, other=0.0)
        pz = tl.load(points_ptr + rows * 3 + 2, mask=row_ok, other=0.0)
        p = tl.where(
            coord[None, :] == 0,
            px[:, None],
            tl.where(coord[None, :] == 1, py[:, None], pz[:, None]),
        )
        angle = p * freq[None, :]
        wave = tl.where(is_cos[None, :], tl.cos(angle), tl.sin(angle))
        if ANNEAL:
            wave = wave * band_weight[None, :]
        features = tl.where(col[None, :] < 3, p, wave)
        features = tl.where(col_valid[None, :], features, 0.0)

        tl.debug_barrier()  # the previous tile's reads of the scratch are done
        for n0 in range(0, H, BLOCK_N):
            w_in = tl.load(
                w_in_ptr + (n0 + cols_n)[None, :] * K_IN + col[:, None],
                mask=col_valid[:, None],
                other=0.0,
            )
            acc = tl.dot(features, w_in, input_precision=PRECISION)
            acc += tl.load(b_in_ptr + n0 + cols_n)[None, :]
            tl.store(act + n0 + tile_offsets, acc)
            tl.store(rel + n0 + tile_offsets, tl.maximum(acc, 0.0))
        tl.debug_barrier()

        for i in tl.static_range(N_BLOCKS):
            if LATENT_SIZE > 0:
                code = tl.minimum(rows // points_per_code, (n_rows - 1) // points_per_code)
                for n0 in range(0, H, BLOCK_N):
                    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                    for c0 in range(0, LATENT_SIZE, BLOCK_C):
                        cc = c0 + tl.arange(0, BLOCK_C)
                        c_ok = cc < LATENT_SIZE
                        z = tl.load(
                            latent_ptr + code[:, None] * LATENT_SIZE + cc[None, :],
                            mask=c_ok[None, :],
                            other=0.0,
                        )
                        w = tl.load(
                            wls[i] + (n0 + cols_n)[None, :] * LATENT_SIZE + cc[:, None],
                            mask=c_ok[:, None],
                            other=0.0,
                        )
                        acc = tl.dot(z, w, acc, input_precision=PRECISION)
                    acc += tl.load(bls[i] + n0 + cols_n)[None, :]
                    acc += tl.load(act + n0 + tile_offsets)
                    tl.store(act + n0 + tile_offsets, acc)
                    tl.store(rel + n0 + tile_offsets, tl.maximum(acc, 0.0))
                tl.debug_barrier()
            for n0 in range(0, H, BLOCK_N):
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for k0 in range(0, H, BLOCK_K):
                    a = tl.load(rel + rows_local[:, None] * H + (k0 + cols_k)[None, :])
                    w = tl.load(w0s[i] + (n0 + cols_n)[None, :] * H + (k0 + cols_k)[:, None])
                    acc = tl.dot(a, w, acc, input_precision=PRECISION)
                acc += tl.load(b0s[i] + n0 + cols_n)[None, :]
                tl.store(hid + n0 + tile_offsets, tl.maximum(acc, 0.0))
            tl.debug_barrier()
            for n0 in range(0, H, BLOCK_N):
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for k0 in range(0, H, BLOCK_K):
                    a = tl.load(hid + rows_local[:, None] * H + (k0 + cols_k)[None, :])
                    w = tl.load(w1s[i] + (n0 + cols_n)[None, :] * H + (k0 + cols_k)[:, None])
                    acc = tl.dot(a, w, acc, input_precision=PRECISION)
                acc += tl.load(b1s[i] + n0 + cols_n)[None, :]
                acc = tl.load(act + n0 + tile_offsets) + acc
                tl.store(act + n0 + tile_offsets, acc)
                tl.store(rel + n0 + tile_offsets, tl.maximum(acc, 0.0))
            tl.debug_barrier()

        value = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            a = tl.load(rel + rows_local[:, None] * H + (k0 + cols_k)[None, :])
            w = tl.load(w_out_ptr + k0 + cols_k)
            value += tl.sum(a * w[None, :], axis=1)
        value += tl.load(b_out_ptr)
        if SPHERE != SPHERE_NONE:
            norm = tl.sqrt(px * px + py * py + pz * pz)
            if SPHERE == SPHERE_SDF:
                value = value + norm - sphere_radius
            else:
                value = value + sphere_sharpness * (sphere_radius - norm)
        tl.store(out_ptr + rows, value, mask=row_ok)
        tile += n_programs


_kernels: dict[bool, object] = {}


def kernel():
    """
    ``(jitted, interpreted)``: the ``triton.jit`` of :func:`fused_decoder_kernel` and whether it
    runs in the Triton interpreter (``TRITON_INTERPRET=1``, which Triton needs in the environment
    before it is imported), built once per mode.
    """
    interpret = bool(triton.knobs.runtime.interpret)
    if interpret not in _kernels:
        # the counts change with every call of the surface search: specialising on them (Triton
        # does for integers that are 1 or multiples of 16) would compile up to 27 variants
        _kernels[interpret] = triton.jit(
            fused_decoder_kernel, do_not_specialize=["n_rows", "n_tiles", "points_per_code"]
        )
    return _kernels[interpret], interpret
