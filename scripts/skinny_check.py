#!/usr/bin/env python3
"""CPU-only check of cuda/matmul.cu's few-rows kernel (HH_CUDA_SKINNY=1), no GPU needed:
replays skinny_matmul_kernel's addressing on flat buffers, with WMMA's loads and stores
emulated element by element from the pointer and ldm the kernel passes, and compares with
plain numpy math.
  1. WMMA's rules at every fragment pointer: 32-byte aligned, ldm a multiple of 4 floats.
  2. The tiles: block b owns columns [32b, 32b + 32), warp w the K slice [w·K/8, (w+1)·K/8),
     row tile r the rows [16r, 16r + 16); x as matrix_a (row-major, ldm K), W's rows as a
     column-major matrix_b (ldm K); the partial tiles stored row-major (ldm 32) in the
     warp's part of shared memory and added in warp order with the bias and the residual.
  3. skinny_matmul's shape rule: which 124M decode products it takes.
Outputs and shared memory start NaN-filled, so any element not written shows up. Planted
bugs (--plant) must fail.
  /usr/bin/python3 scripts/skinny_check.py --plant
"""
import sys

from replay_checks import Checks, numpy_or_skip

np = numpy_or_skip("skinny_check")
WARPS, COLS = 8, 32  # kSkinnyWarps, kSkinnyCols
H100_SMS = 132
check = Checks("skinny_check")
PLANT = None  # name of a deliberately broken variant (self-test of this checker)


def set_plant(plant):
    global PLANT
    PLANT = plant


def wmma_rules(off, ldm, what):
    # Float offsets from a 256-byte aligned base (cudaMalloc, __align__(128) shared memory).
    check((off * 4) % 32 == 0, f"{what}: pointer offset {off} floats not 32-byte aligned")
    check(ldm % 4 == 0, f"{what}: ldm {ldm} not a multiple of 4 floats")


def load_a(buf, off, ldm):  # matrix_a 16x8, row-major: (i, k) at off + i*ldm + k
    wmma_rules(off, ldm, "load matrix_a")
    i = np.arange(16)[:, None]; k = np.arange(8)[None, :]
    return buf[off + i * ldm + k]


def load_b_col(buf, off, ldm):  # matrix_b 8x16, column-major: (k, j) at off + j*ldm + k
    wmma_rules(off, ldm, "load matrix_b")
    k = np.arange(8)[:, None]; j = np.arange(16)[None, :]
    return buf[off + j * ldm + k]


def store_row(buf, off, acc, ldm):  # accumulator 16x16 stored row-major
    wmma_rules(off, ldm, "store accumulator")
    i = np.arange(16)[:, None]; j = np.arange(16)[None, :]
    buf[off + i * ldm + j] = acc


def fits(N, IC, OC, num_sms=H100_SMS, aligned=True):  # skinny_matmul's rule
    if N % 16 or N < 16 or N > 64:
        return False
    if IC % (8 * WARPS) or OC % COLS:
        return False
    if OC // COLS < num_sms // 2:
        return False
    return aligned


def kernel(x, w, bias, residual, out, N, K, OC):
    """skinny_matmul_kernel<RT = N/16> over grid OC/32; x [N*K], w [OC*K] flat."""
    RT, CT, BM = N // 16, COLS // 16, N
    kw = K // WARPS
    for block in range(OC // COLS):
        partial = np.full(WARPS * BM * COLS, np.nan)  # dynamic shared memory
        n0 = block * COLS
        for warp in range(WARPS):
            xw = warp * kw                        # x + warp·kw
            ww = n0 * K + warp * kw               # w + n0·K + warp·kw
            if PLANT == "warp_slice":
                ww = n0 * K + warp * 8
            acc = [[np.zeros((16, 16)) for _ in range(CT)] for _ in range(RT)]
            for k in range(0, kw, 8):
                fb = [load_b_col(w, ww + 16 * c * K + k, K) for c in range(CT)]
                for r in range(RT):
                    row_off = 16 * r * K if PLANT != "row_tile" else 16 * r
                    fa = load_a(x, xw + row_off + k, K)
                    for c in range(CT):
                        acc[r][c] += fa @ fb[c]
            mine = warp * BM * COLS
            for r in range(RT):
                for c in range(CT):
                    col = 16 * c if PLANT != "store_col" else 0
                    store_row(partial, mine + 16 * r * COLS + col, acc[r][c], COLS)
        for i in range(BM * COLS):  # the epilogue: threads stride over the tile
            s = 0.0
            for v in range(WARPS if PLANT != "warps" else WARPS - 1):
                s += partial[v * BM * COLS + i]
            n = n0 + i % COLS
            at = (i // COLS) * OC + n
            if bias is not None:
                s += bias[n]
            if residual is not None:
                s += residual[at]
            out[at] = s


def run(N, K, OC, rng, quiet=False):
    x = rng.standard_normal(N * K); w = rng.standard_normal(OC * K)
    bias = rng.standard_normal(OC); residual = rng.standard_normal(N * OC)
    ref = x.reshape(N, K) @ w.reshape(OC, K).T
    worst = 0.0
    for b, r in ((bias, None), (None, None), (bias, residual)):
        out = np.full(N * OC, np.nan)
        kernel(x, w, b, r, out, N, K, OC)
        want = ref + (b if b is not None else 0) + (r.reshape(N, OC) if r is not None else 0)
        err = np.abs(out.reshape(N, OC) - want)
        worst = max(worst, np.nan_to_num(err, nan=np.inf).max())
    if not quiet:
        print(f"skinny N={N} K={K} OC={OC}: worst |error| {worst:.3g}")
    return worst


def main():
    rng = np.random.default_rng(0)
    # Small shapes with every row count (the grid is OC/32 whatever the SM rule says).
    for N in (16, 32, 48, 64):
        check(run(N, 128, 64, rng) < 1e-9, f"skinny N={N} K=128 OC=64")
    check(run(64, 192, 96, rng) < 1e-9, "skinny N=64 K=192 OC=96")
    # The shape rule at 124M (batch 64): qkv, fc and the LM head yes; the projections no.
    for (n, ic, oc), want in (((64, 768, 2304), True), ((64, 768, 3072), True),
                              ((64, 768, 50304), True), ((64, 768, 768), False),
                              ((64, 3072, 768), False), ((37, 768, 2304), False),
                              ((64, 100, 2304), False), ((80, 768, 2304), False)):
        check(fits(n, ic, oc) == want, f"rule for {n}x{ic}x{oc}: expected {want}")
    if "--plant" in sys.argv[1:]:  # each planted bug must be caught
        check.planted_bugs_caught(
            ("warp_slice", "row_tile", "store_col", "warps"), set_plant,
            lambda: check(run(32, 128, 64, np.random.default_rng(1), quiet=True) < 1e-9,
                          "skinny N=32 K=128 OC=64 (planted)"))
    check.finish()


if __name__ == "__main__":
    main()
