#!/usr/bin/env python3
"""CPU-only check of cuda/attention_flash_tc.cu (HH_CUDA_FLASH=2), no GPU needed: replays
the kernels' tiling and index logic in numpy and compares with plain float64 attention.
  1. Layout: the shared-memory carve-up (offsets, sizes, the bytes quoted in the file's
     comment), WMMA's rules (ld a multiple of 4 floats, every fragment pointer 32-byte
     aligned), the bank spread of the padded rows, and rotated_col() visiting each column of
     a lane's half exactly once.
  2. Forward (flash_tc_forward_kernel): query tiles of 64, key tiles up to min(q0 + 64, L),
     the masks s <= t and t < L, rows >= L staged as zeros, the online softmax with O kept
     in fp32 and rescaled per row by alpha before O += P.V, out = O/l, lse = m + log l,
     padded rows 0; the products on the staged tiles (optionally with TF32-rounded
     operands, as the hardware does).
  3. Backward: D = rowsum(dout * out) (flash_tc_d_kernel), the dq kernel's loop over key
     tiles, the dk/dv kernel's loop over query tiles from the diagonal tile to L.
Outputs start NaN-filled, so any entry a kernel would not write shows up. Each shape runs
with exact float32 products (tight tolerance: catches any index or mask error) and with
TF32-rounded operands (the test's tolerance). Planted bugs (--plant) must fail.
  /usr/bin/python3 scripts/flash_tc_check.py
"""
import sys

from replay_checks import Checks, numpy_or_skip

np = numpy_or_skip("flash_tc_check")
f32 = np.float32
TILE = 64  # kTile
PAD = 4  # kPad
LDS = TILE + PAD  # kLdS
SUPPORTED = (16, 32, 48, 64)  # with_head_size
MAX_OPTIN = 227 * 1024  # H100 sharedMemPerBlockOptin
check = Checks("flash_tc_check")
PLANT = None  # name of a deliberately broken variant (self-test of this checker)


def set_plant(plant):
    global PLANT
    PLANT = plant


def tf32(x):
    """cvt.rna.tf32.f32: round to nearest (ties away from zero) to a 10-bit mantissa."""
    b = np.ascontiguousarray(x, dtype=f32).view(np.uint32)
    return ((b + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(f32)


# ---- 1. layout ----
def carve(hs, parts):
    """Consecutive regions of the given sizes, as ForwardSmem/BackwardSmem lay them out:
    (ld, {name: (offset, floats)}, bytes)."""
    ld = hs + PAD
    sizes = {"tile": TILE * ld, "scores": TILE * LDS, "row": TILE}
    layout, at = {}, 0
    for name, kind in parts:
        layout[name] = (at, sizes[kind])
        at += sizes[kind]
    return ld, layout, at * 4


def forward_smem(hs):
    return carve(hs, [("q", "tile"), ("k", "tile"), ("v", "tile"), ("o", "tile"),
                      ("s", "scores"), ("inv_l", "row")])


def backward_smem(hs):
    return carve(hs, [("a", "tile"), ("b", "tile"), ("c", "tile"), ("d", "tile"),
                      ("s", "scores"), ("dp", "scores"), ("lse", "row"), ("dd", "row")])


def check_layout():
    for hs in SUPPORTED:
        for name, (ld, parts, nbytes) in (("forward", forward_smem(hs)), ("backward", backward_smem(hs))):
            spans = sorted(parts.values())
            for (o1, n1), (o2, _) in zip(spans, spans[1:]):
                check(o1 + n1 <= o2, f"{name} hs={hs}: smem parts overlap")
            check(spans[-1][0] + spans[-1][1] == nbytes // 4, f"{name} hs={hs}: size")
            for key, (off, _) in parts.items():
                check(off % 8 == 0, f"{name} hs={hs}: part {key} not 32-byte aligned")
            check(nbytes <= MAX_OPTIN, f"{name} hs={hs}: {nbytes} B > opt-in limit")
            for ldx in (ld, LDS):
                check(ldx % 4 == 0, f"{name} hs={hs}: ld {ldx} not a multiple of 4")
                # fragment pointers: row offsets multiples of 8 (k steps) or 16, columns
                # multiples of 8: (row*ld + col)*4 bytes must be a multiple of 32
                for row in range(0, TILE, 8):
                    for col in range(0, max(hs, TILE), 8):
                        check((row * ldx + col) % 8 == 0, f"{name} hs={hs}: misaligned fragment")
                # a tf32 fragment load touches rows 0..7 x columns 0..3 (one per lane): banks
                banks = {(r * ldx + c) % 32 for r in range(8) for c in range(4)}
                check(len(banks) == 32, f"{name} hs={hs} ld={ldx}: bank conflicts in fragment loads")
    _, _, fb = forward_smem(64)
    _, _, bb = backward_smem(64)
    check(fb == 87296 and bb == 104960, f"quoted smem bytes: forward {fb}, backward {bb}")

    def rotated_col(W, j, r, half):
        return half * W + (j + r + 16 * half) % W

    for W in (8, 16, 24, 32):
        for half in (0, 1):
            for r in range(16):
                cols = sorted(rotated_col(W, j, r, half) for j in range(W))
                check(cols == list(range(half * W, half * W + W)), f"rotated_col W={W} r={r} half={half}")
    for j in range(32):  # the 64-wide score tiles, ld = 68: 32 lanes, 32 banks
        banks = {(r * LDS + rotated_col(32, j, r, h)) % 32 for r in range(16) for h in (0, 1)}
        check(len(banks) == 32, f"rotated_col j={j}: bank conflicts")


# ---- 2./3. replay of the kernels ----
def stage(base, first, limit, T):
    """stage<HS>: rows [first, first + 64) of base [T, hs]; rows >= limit are zeros."""
    hs = base.shape[1]
    tile = np.zeros((TILE, hs), dtype=f32)
    for r in range(TILE):
        row = first + r
        if row < limit:
            assert row < T
            tile[r] = base[row]
    return tile


def mm(a, b, round_ops):
    if round_ops:
        a, b = tf32(a), tf32(b)
    return (a.astype(f32) @ b.astype(f32)).astype(f32)


def head_qkv(qkv, b, h, C, hs):
    """Sequence b's q, k and v of head h: [T, hs] views of qkv [B, T, 3C]."""
    return tuple(qkv[b, :, part * C + h * hs:part * C + (h + 1) * hs] for part in range(3))


def forward(qkv, lengths, B, T, C, NH, round_ops):
    hs = C // NH
    scale = f32(1.0 / np.sqrt(f32(hs)))
    out = np.full((B, T, C), np.nan, dtype=f32)
    lse = np.full((B, NH, T), np.nan, dtype=f32)
    ntiles = (T + TILE - 1) // TILE
    for b in range(B):
        L = min(max(int(lengths[b]), 0), T)
        for h in range(NH):
            q_all, k_all, v_all = head_qkv(qkv, b, h, C, hs)
            for bx in range(ntiles):
                q0 = (ntiles - 1 - bx) * TILE
                rows = min(TILE, T - q0)
                if q0 >= L:
                    out[b, q0:q0 + rows, h * hs:(h + 1) * hs] = 0
                    lse[b, h, q0:q0 + rows] = 0
                    continue
                Q = stage(q_all, q0, L, T)
                O = np.zeros((TILE, hs), dtype=f32)
                m = np.full(TILE, -np.inf, dtype=f32)
                l = np.zeros(TILE, dtype=f32)
                t = q0 + np.arange(TILE)[:, None]
                key_end = min(q0 + TILE, L)
                if PLANT == "key_end":
                    key_end = min(q0, L)
                for k0 in range(0, key_end, TILE):
                    K = stage(k_all, k0, L, T)
                    V = stage(v_all, k0, L, T)
                    S = mm(Q, K.T, round_ops)
                    s = k0 + np.arange(TILE)[None, :]
                    live = (s <= t) & (t < L)
                    if PLANT == "mask":
                        live = (s < t) & (t < L)
                    x = scale * S
                    mx = np.where(live, x, -np.inf).max(axis=1).astype(f32)
                    m_new = np.maximum(m, mx)
                    with np.errstate(invalid="ignore"):
                        alpha = np.where(m_new == -np.inf, f32(1), np.exp(m - m_new)).astype(f32)
                    with np.errstate(invalid="ignore", over="ignore"):
                        P = np.where(live, np.exp(x - m_new[:, None]), f32(0)).astype(f32)
                    l = (alpha * l + P.sum(axis=1)).astype(f32)
                    m = m_new
                    if PLANT != "rescale":
                        O = O * alpha[:, None]
                    O = (O + mm(P, V, round_ops)).astype(f32)
                trow = q0 + np.arange(TILE)
                live_row = trow < L
                with np.errstate(divide="ignore"):
                    inv_l = np.where(live_row, 1 / l, 0).astype(f32)
                    lrow = np.where(live_row, m + np.log(np.where(live_row, l, 1)), 0).astype(f32)
                for rr in range(rows):
                    out[b, q0 + rr, h * hs:(h + 1) * hs] = O[rr] * inv_l[rr]
                    lse[b, h, q0 + rr] = lrow[rr]
    return out, lse


def backward(qkv, dout, out, lse, lengths, B, T, C, NH, round_ops):
    hs = C // NH
    scale = f32(1.0 / np.sqrt(f32(hs)))
    ntiles = (T + TILE - 1) // TILE
    # flash_tc_d_kernel
    D = np.full((B, NH, T), np.nan, dtype=f32)
    for b in range(B):
        L = min(max(int(lengths[b]), 0), T)
        for h in range(NH):
            for t in range(T):
                D[b, h, t] = (dout[b, t, h * hs:(h + 1) * hs] * out[b, t, h * hs:(h + 1) * hs]).sum() if t < L else 0
    dqkv = np.full((B, T, 3 * C), np.nan, dtype=f32)
    for b in range(B):
        L = min(max(int(lengths[b]), 0), T)
        for h in range(NH):
            q_all, k_all, v_all = head_qkv(qkv, b, h, C, hs)
            dy_all = dout[b, :, h * hs:(h + 1) * hs]
            cq, ck, cv = h * hs, C + h * hs, 2 * C + h * hs
            # flash_tc_dq_kernel
            for bx in range(ntiles):
                q0 = (ntiles - 1 - bx) * TILE
                rows = min(TILE, T - q0)
                if q0 >= L:
                    dqkv[b, q0:q0 + rows, cq:cq + hs] = 0
                    continue
                Q = stage(q_all, q0, L, T)
                dY = stage(dy_all, q0, L, T)
                trow = q0 + np.arange(TILE)
                live_row = trow < L
                row_lse = np.where(live_row, lse[b, h, np.minimum(trow, T - 1)], 0).astype(f32)
                row_d = np.where(live_row, D[b, h, np.minimum(trow, T - 1)], 0).astype(f32)
                dq = np.zeros((TILE, hs), dtype=f32)
                t = trow[:, None]
                for k0 in range(0, min(q0 + TILE, L), TILE):
                    K = stage(k_all, k0, L, T)
                    V = stage(v_all, k0, L, T)
                    S = mm(Q, K.T, round_ops)
                    dP = mm(dY, V.T, round_ops)
                    s = k0 + np.arange(TILE)[None, :]
                    live = (s <= t) & live_row[:, None]
                    with np.errstate(over="ignore", invalid="ignore"):
                        dS = np.where(live, np.exp(scale * S - row_lse[:, None]) * (dP - row_d[:, None]), 0).astype(f32)
                    dq = (dq + mm(dS, K, round_ops)).astype(f32)
                for rr in range(rows):
                    dqkv[b, q0 + rr, cq:cq + hs] = scale * dq[rr] if q0 + rr < L else 0
            # flash_tc_dkv_kernel
            for bx in range(ntiles):
                k0 = bx * TILE
                rows = min(TILE, T - k0)
                if k0 >= L:
                    dqkv[b, k0:k0 + rows, ck:ck + hs] = 0
                    dqkv[b, k0:k0 + rows, cv:cv + hs] = 0
                    continue
                K = stage(k_all, k0, L, T)
                V = stage(v_all, k0, L, T)
                s = (k0 + np.arange(TILE))[:, None]
                dk = np.zeros((TILE, hs), dtype=f32)
                dv = np.zeros((TILE, hs), dtype=f32)
                first = k0 + TILE if PLANT == "diag" else k0
                for t0 in range(first, L, TILE):
                    Q = stage(q_all, t0, L, T)
                    dY = stage(dy_all, t0, L, T)
                    tq = t0 + np.arange(TILE)
                    lse_s = np.where(tq < L, lse[b, h, np.minimum(tq, T - 1)], 0).astype(f32)
                    d_s = np.where(tq < L, D[b, h, np.minimum(tq, T - 1)], 0).astype(f32)
                    St = mm(K, Q.T, round_ops)
                    dPt = mm(V, dY.T, round_ops)
                    on = (s <= tq[None, :]) & (tq[None, :] < L)
                    with np.errstate(over="ignore", invalid="ignore"):
                        P = np.where(on, np.exp(scale * St - lse_s[None, :]), 0).astype(f32)
                    dSt = np.where(on, P * (dPt - d_s[None, :]), 0).astype(f32)
                    dv = (dv + mm(P, dY, round_ops)).astype(f32)
                    dk = (dk + mm(dSt, Q, round_ops)).astype(f32)
                for rr in range(rows):
                    ok = k0 + rr < L
                    dqkv[b, k0 + rr, ck:ck + hs] = scale * dk[rr] if ok else 0
                    dqkv[b, k0 + rr, cv:cv + hs] = dv[rr] if ok else 0
    return dqkv


def reference(qkv, dout, lengths, B, T, C, NH):
    """Plain float64 attention and its gradients (the math in attention.cu's header)."""
    hs = C // NH
    scale = 1.0 / np.sqrt(hs)
    x = qkv.astype(np.float64)
    dy = dout.astype(np.float64)
    out = np.zeros((B, T, C))
    lse = np.zeros((B, NH, T))
    dqkv = np.zeros((B, T, 3 * C))
    for b in range(B):
        L = int(lengths[b])
        for h in range(NH):
            q = x[b, :L, h * hs:(h + 1) * hs]
            k = x[b, :L, C + h * hs:C + (h + 1) * hs]
            v = x[b, :L, 2 * C + h * hs:2 * C + (h + 1) * hs]
            S = scale * q @ k.T
            S = np.where(np.tril(np.ones((L, L), dtype=bool)), S, -np.inf)
            mx = S.max(axis=1, keepdims=True)
            e = np.exp(S - mx)
            z = e.sum(axis=1, keepdims=True)
            P = e / z
            out[b, :L, h * hs:(h + 1) * hs] = P @ v
            lse[b, h, :L] = (mx + np.log(z))[:, 0]
            g = dy[b, :L, h * hs:(h + 1) * hs]
            dP = g @ v.T
            dS = scale * P * (dP - (P * dP).sum(axis=1, keepdims=True))
            dqkv[b, :L, h * hs:(h + 1) * hs] = dS @ k
            dqkv[b, :L, C + h * hs:C + (h + 1) * hs] = dS.T @ q
            dqkv[b, :L, 2 * C + h * hs:2 * C + (h + 1) * hs] = P.T @ g
    return out, lse, dqkv


def expect_close(ref, got, tol, what):
    """tests/test_ops_cuda.cpp's expect_close: |got - ref| <= tol*(|ref| + rms(ref))."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    got = np.asarray(got, dtype=np.float64).ravel()
    rms = np.sqrt((ref * ref).mean()) if ref.size else 0.0
    bound = tol * (np.abs(ref) + rms) + 1e-30
    diff = np.abs(got - ref)
    bad = ~(diff <= bound)  # NaN counts as bad
    worst = float(np.nanmax(diff / bound)) if ref.size else 0.0
    check(not bad.any(), f"{what}: {int(bad.sum())} of {ref.size} entries off (worst {worst:.2f} x tol)")
    return worst


def run_shape(B, T, NH, hs, lengths, seed, quiet=False):
    C = NH * hs
    rng = np.random.default_rng(seed)
    qkv = rng.uniform(-1.5, 1.5, size=(B, T, 3 * C)).astype(f32)
    dout = rng.uniform(-1, 1, size=(B, T, C)).astype(f32)
    for b in range(B):  # padding may hold anything: it must not leak
        qkv[b, lengths[b]:] = 7.0
        dout[b, lengths[b]:] = -3.0
    ref_out, ref_lse, ref_dqkv = reference(qkv, dout, lengths, B, T, C, NH)
    tag = f"B={B} T={T} NH={NH} hs={hs} lengths={lengths}"
    worst = {}
    for round_ops, tol in ((False, 1e-4), (True, 1e-2)):
        mode = "tf32" if round_ops else "fp32"
        out, lse = forward(qkv, lengths, B, T, C, NH, round_ops)
        dqkv = backward(qkv, dout, out, lse, lengths, B, T, C, NH, round_ops)
        w = [expect_close(ref_out, out, tol, f"out {mode} {tag}"),
             expect_close(ref_lse, lse, tol, f"lse {mode} {tag}"),
             expect_close(ref_dqkv, dqkv, tol, f"dqkv {mode} {tag}")]
        worst[mode] = max(w)
        for b in range(B):
            check(np.all(out[b, lengths[b]:] == 0) and np.all(dqkv[b, lengths[b]:] == 0)
                  and np.all(lse[b, :, lengths[b]:] == 0), f"padded rows not exactly 0 ({mode} {tag})")
    if not quiet:
        print(f"  {tag}: worst |err|/tol fp32 {worst['fp32']:.3f} (tol 1e-4), tf32 {worst['tf32']:.3f} (tol 1e-2)")


SHAPES = [  # the GPU test's shapes (AttentionFlashTensorCores), plus the other head sizes
    (1, 1, 3, 64, [1]),
    (3, 37, 3, 64, [37, 1, 20]),
    (3, 130, 12, 64, [130, 1, 65]),
    (2, 256, 3, 64, [256, 200]),
    (2, 100, 2, 16, [100, 64]),
    (2, 70, 2, 32, [70, 63]),
    (1, 129, 1, 48, [128]),
]


def supported(hs, T, tf32_on=True, flash=2):
    """flash_tc_supported (max_shared_optin as on the H100)."""
    if flash != 2 or not tf32_on or T <= 0:
        return False
    if not (hs % 16 == 0 and 16 <= hs <= 64):
        return False
    return max(forward_smem(hs)[2], backward_smem(hs)[2]) <= MAX_OPTIN


def main():
    if "--plant" in sys.argv[1:]:  # each planted bug must be caught
        check.planted_bugs_caught(("key_end", "mask", "rescale", "diag"), set_plant,
                                  lambda: run_shape(2, 130, 2, 16, [130, 70], 5, quiet=True))
    check_layout()
    check(all(supported(hs, 10) for hs in SUPPORTED), "supported head sizes")
    check(not any(supported(hs, 10) for hs in (8, 24, 40, 80, 96, 128)), "unsupported head sizes fall back")
    check(not supported(64, 10, tf32_on=False) and not supported(64, 10, flash=1), "switches")
    for i, (B, T, NH, hs, lengths) in enumerate(SHAPES):
        run_shape(B, T, NH, hs, lengths, 100 + i)
    check.finish()


if __name__ == "__main__":
    main()
