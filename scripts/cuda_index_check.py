#!/usr/bin/env python3
"""CPU-only check of the CUDA backend's index arithmetic (no GPU needed): emulates cuBLAS's
column-major (strided-batched) SGEMM on flat buffers and replays the exact calls of
cuda/matmul.cu and cuda/attention.cu, then replays cuda/attention_flash.cu's block/tile/row
index logic, and compares both with plain numpy math. Every difference printed should be
~1e-15 and no NaN may be left (outputs start as NaN: every element must be written).
  /usr/bin/python3 scripts/cuda_index_check.py
"""
import sys

from replay_checks import numpy_or_skip

np = numpy_or_skip("cuda_index_check")
rng = np.random.default_rng(0)

def gemm(ta, tb, m, n, k, alpha, A, ao, lda, B, bo, ldb, beta, C, co, ldc):
    def mat(buf, off, ld, rows, cols):  # column-major rows x cols view (copy)
        i = np.arange(rows)[:, None]; j = np.arange(cols)[None, :]
        return buf[off + i + j * ld]
    opA = mat(A, ao, lda, m, k) if ta == 'N' else mat(A, ao, lda, k, m).T
    opB = mat(B, bo, ldb, k, n) if tb == 'N' else mat(B, bo, ldb, n, k).T
    i = np.arange(m)[:, None]; j = np.arange(n)[None, :]
    idx = co + i + j * ldc
    old = C[idx] if beta != 0 else 0.0
    C[idx] = alpha * (opA @ opB) + beta * old

def batched(ta, tb, m, n, k, alpha, A, ao, lda, sa, B, bo, ldb, sb, beta, C, co, ldc, sc, count):
    for h in range(count):
        gemm(ta, tb, m, n, k, alpha, A, ao + h * sa, lda, B, bo + h * sb, ldb, beta, C, co + h * sc, ldc)

# ---- matmul ----
N, IC, OC = 7, 5, 3
inp = rng.standard_normal(N * IC); W = rng.standard_normal(OC * IC); dout = rng.standard_normal(N * OC)
out = np.zeros(N * OC)
gemm('T', 'N', OC, N, IC, 1.0, W, 0, IC, inp, 0, IC, 0.0, out, 0, OC)
ref = inp.reshape(N, IC) @ W.reshape(OC, IC).T
matmul_err = [np.abs(out.reshape(N, OC) - ref).max()]
print("matmul fwd", matmul_err[-1])
dinp = np.full(N * IC, np.nan)
gemm('N', 'N', IC, N, OC, 1.0, W, 0, IC, dout, 0, OC, 0.0, dinp, 0, IC)
matmul_err.append(np.abs(dinp.reshape(N, IC) - dout.reshape(N, OC) @ W.reshape(OC, IC)).max())
print("matmul dinp", matmul_err[-1])
dW0 = rng.standard_normal(OC * IC); dW = dW0.copy()
gemm('N', 'T', IC, OC, N, 1.0, inp, 0, IC, dout, 0, OC, 1.0, dW, 0, IC)
matmul_err.append(np.abs(dW.reshape(OC, IC) - (dW0.reshape(OC, IC) + dout.reshape(N, OC).T @ inp.reshape(N, IC))).max())
print("matmul dW", matmul_err[-1])

# ---- attention (cuBLAS path: saved = lse, scores recomputed in the backward), B sequences,
# NH heads, in chunks of `hc` heads and `R` causal row blocks, as cuda/attention.cu calls it.
# The scratch regions are set to NaN before every block: a product or kernel that read a
# part of them its own block did not write would leave NaN in the outputs.
def row_blocks(T, R):
    R = max(1, min(R, T)); rows = (T + R - 1) // R
    return [(q0, min(rows, T - q0), q0 + min(rows, T - q0)) for q0 in range(0, T, rows)]

def softmax_rows(att, lse, L, n, T, blk):  # attention_softmax_kernel: in place, writes [0, width)
    q0, nq, w = blk
    for h in range(n):
        for t in range(q0, q0 + nq):
            off = (h * T + t) * T; stat = h * T + t
            if t >= L: att[off: off + w] = 0; lse[stat] = 0; continue
            e = np.exp(att[off: off + t + 1] - att[off: off + t + 1].max())
            lse[stat] = att[off: off + t + 1].max() + np.log(e.sum())
            att[off: off + w] = 0; att[off: off + t + 1] = e / e.sum()

def probs_rows(att, lse, L, n, T, blk):  # attention_probs_kernel
    q0, nq, w = blk
    for h in range(n):
        for t in range(q0, q0 + nq):
            off = (h * T + t) * T; stat = h * T + t
            row = np.zeros(w)
            if t < L: row[: t + 1] = np.exp(att[off: off + t + 1] - lse[stat])
            att[off: off + w] = row

def softmax_backward_rows(dp, p, L, n, T, blk, scale):  # attention_softmax_backward_kernel
    q0, nq, w = blk
    for h in range(n):
        for t in range(q0, q0 + nq):
            off = (h * T + t) * T
            row = np.zeros(w)
            if t < L:
                dot = (p[off: off + t + 1] * dp[off: off + t + 1]).sum()
                row[: t + 1] = scale * p[off: off + t + 1] * (dp[off: off + t + 1] - dot)
            dp[off: off + w] = row

def attention(B, T, NH, hs, lengths, hc, R, seed):
    r = np.random.default_rng(seed)
    C = NH * hs; TT = T * T; scale = 1 / np.sqrt(hs)
    qkv = r.standard_normal(B * T * 3 * C); dy = r.standard_normal(B * T * C)
    blocks = row_blocks(T, R)
    saved = np.full(B * NH * T, np.nan); out = np.full(B * T * C, np.nan)
    p = np.full(hc * TT, np.nan)
    for b in range(B):
        for h0 in range(0, NH, hc):
            n = min(hc, NH - h0)
            q = b * T * 3 * C + h0 * hs; k = q + C; v = q + 2 * C
            lse = (b * NH + h0) * T; o = b * T * C + h0 * hs
            lse_view = saved[lse: lse + n * T]
            for (q0, nq, w) in blocks:
                p[:] = np.nan
                batched('T', 'N', w, nq, hs, scale, qkv, k, 3 * C, hs, qkv, q + q0 * 3 * C, 3 * C, hs, 0.0, p, q0 * T, T, TT, n)
                softmax_rows(p, lse_view, lengths[b], n, T, (q0, nq, w))
                batched('N', 'N', hs, nq, w, 1.0, qkv, v, 3 * C, hs, p, q0 * T, T, TT, 0.0, out, o + q0 * C, C, hs, n)
            saved[lse: lse + n * T] = lse_view
    dqkv = np.full(B * T * 3 * C, np.nan)
    p = np.full(hc * TT, np.nan); dp = np.full(hc * TT, np.nan)
    for b in range(B):
        for h0 in range(0, NH, hc):
            n = min(hc, NH - h0)
            q = b * T * 3 * C + h0 * hs; k = q + C; v = q + 2 * C
            dq, dk, dv = q, k, v
            d = b * T * C + h0 * hs; lse = saved[(b * NH + h0) * T: (b * NH + h0 + n) * T]
            for i in reversed(range(len(blocks))):
                q0, nq, w = blocks[i]
                beta = 0.0 if i == len(blocks) - 1 else 1.0
                p[:] = np.nan; dp[:] = np.nan
                batched('T', 'N', w, nq, hs, scale, qkv, k, 3 * C, hs, qkv, q + q0 * 3 * C, 3 * C, hs, 0.0, p, q0 * T, T, TT, n)
                probs_rows(p, lse, lengths[b], n, T, blocks[i])
                batched('T', 'N', w, nq, hs, 1.0, qkv, v, 3 * C, hs, dy, d + q0 * C, C, hs, 0.0, dp, q0 * T, T, TT, n)
                batched('N', 'T', hs, w, nq, 1.0, dy, d + q0 * C, C, hs, p, q0 * T, T, TT, beta, dqkv, dv, 3 * C, hs, n)
                softmax_backward_rows(dp, p, lengths[b], n, T, blocks[i], scale)
                batched('N', 'N', hs, nq, w, 1.0, qkv, k, 3 * C, hs, dp, q0 * T, T, TT, 0.0, dqkv, dq + q0 * 3 * C, 3 * C, hs, n)
                batched('N', 'T', hs, w, nq, 1.0, qkv, q + q0 * 3 * C, 3 * C, hs, dp, q0 * T, T, TT, beta, dqkv, dk, 3 * C, hs, n)
    # reference
    X = qkv.reshape(B, T, 3, NH, hs)
    Q, K, V = X[:, :, 0], X[:, :, 1], X[:, :, 2]
    dY = dy.reshape(B, T, NH, hs)
    Oref = np.zeros((B, T, NH, hs)); Lref = np.zeros((B, NH, T))
    dQ = np.zeros_like(Q); dK = np.zeros_like(K); dV = np.zeros_like(V)
    for b in range(B):
        for h in range(NH):
            S = scale * Q[b, :, h] @ K[b, :, h].T
            Pm = np.zeros((T, T))
            for t in range(lengths[b]):
                m = S[t, : t + 1].max(); e = np.exp(S[t, : t + 1] - m)
                Pm[t, : t + 1] = e / e.sum(); Lref[b, h, t] = m + np.log(e.sum())
            Oref[b, :, h] = Pm @ V[b, :, h]
            dP = dY[b, :, h] @ V[b, :, h].T
            dV[b, :, h] = Pm.T @ dY[b, :, h]
            dS = Pm * (dP - (Pm * dP).sum(1, keepdims=True)) * scale
            dQ[b, :, h] = dS @ K[b, :, h]; dK[b, :, h] = dS.T @ Q[b, :, h]
    G = dqkv.reshape(B, T, 3, NH, hs)
    err = max(np.abs(out.reshape(B, T, NH, hs) - Oref).max(), np.abs(saved.reshape(B, NH, T) - Lref).max(),
              np.abs(G[:, :, 0] - dQ).max(), np.abs(G[:, :, 1] - dK).max(), np.abs(G[:, :, 2] - dV).max())
    nan = np.isnan(out).sum() + np.isnan(saved).sum() + np.isnan(dqkv).sum()
    print(f"attention B={B} T={T} NH={NH} hs={hs} heads/chunk={hc} row blocks={R}: max error {err:.1e}, NaN left {nan}")
    return err < 1e-12 and nan == 0

ok = max(matmul_err) < 1e-12
for hc, R in ((3, 1), (2, 1), (3, 2), (1, 3), (2, 7), (3, 4)):
    ok &= attention(2, 7, 3, 4, [7, 4], hc, R, seed=10 + R)
ok &= attention(3, 5, 2, 3, [5, 1, 3], 2, 2, seed=3)
print("attention (cuBLAS path):", "OK" if ok else "FAILED")

# ---- flash attention (attention_flash.cu) ----
kRows = 32
def run(B, T, NH, hs, lengths):
    C = NH * hs; scale = 1 / np.sqrt(hs)
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float64); dout = rng.standard_normal(B * T * C)
    stride = 3 * C
    def row(base, st, r): return base[r * st: r * st + hs] if r < T else np.zeros(hs)
    out = np.full(B * T * C, np.nan); lse = np.full(B * NH * T, np.nan)
    grid_x = -(-T // kRows)
    for b in range(B):
        for h in range(NH):
            qb = qkv[b * T * stride + h * hs:]; kb = qkv[b * T * stride + h * hs + C:]; vb = qkv[b * T * stride + h * hs + 2 * C:]
            L = min(max(lengths[b], 0), T)
            for bx in range(grid_x):
                block_first = (grid_x - 1 - bx) * kRows
                last_key = min(block_first + kRows - 1, L - 1)
                for tid in range(kRows):
                    t = block_first + tid; valid = t < L
                    q = row(qb, stride, t) * scale; o = np.zeros(hs); m = -np.inf; l = 0.0
                    tile_first = 0
                    while tile_first <= last_key:
                        for r in range(kRows):
                            s = tile_first + r; kk = row(kb, stride, s); vv = row(vb, stride, s)
                            score = q @ kk
                            if valid and s <= t:
                                if score > m:
                                    corr = np.exp(m - score); l *= corr; o *= corr; m = score
                                p = np.exp(score - m); l += p; o += p * vv
                        tile_first += kRows
                    if t < T:
                        out[(b * T + t) * C + h * hs:(b * T + t) * C + h * hs + hs] = o / l if valid else 0
                        lse[(b * NH + h) * T + t] = m + np.log(l) if valid else 0
    # backward: D, dq, dkv
    dqkv = np.full(B * T * 3 * C, np.nan); D = np.full(B * NH * T, np.nan)
    for b in range(B):
        for h in range(NH):
            qb = qkv[b * T * stride + h * hs:]; kb = qkv[b * T * stride + h * hs + C:]; vb = qkv[b * T * stride + h * hs + 2 * C:]
            dyb = dout[b * T * C + h * hs:]
            L = min(max(lengths[b], 0), T); rs = (b * NH + h) * T
            for pass_ in ("D", "dq"):
                for bx in range(grid_x):
                    block_first = (grid_x - 1 - bx) * kRows
                    last_key = min(block_first + kRows - 1, L - 1)
                    for tid in range(kRows):
                        t = block_first + tid; valid = t < L
                        q = row(qb, stride, t) * scale; dy = row(dyb, C, t)
                        acc = np.zeros(hs)
                        rl = lse[rs + t] if valid else 0; rd = (D[rs + t] if valid else 0) if pass_ == "dq" else 0
                        tile_first = 0
                        while tile_first <= last_key:
                            for r in range(kRows):
                                s = tile_first + r; kk = row(kb, stride, s); vv = row(vb, stride, s)
                                score = q @ kk; dp = dy @ vv
                                if valid and s <= t:
                                    p = np.exp(score - rl)
                                    if pass_ == "D": acc += p * vv
                                    else: acc += p * (dp - rd) * kk
                            tile_first += kRows
                        if t < T:
                            if pass_ == "D": D[rs + t] = dy @ acc if valid else 0
                            else: dqkv[(b * T + t) * stride + h * hs:(b * T + t) * stride + h * hs + hs] = scale * acc if valid else 0
            for bx in range(grid_x):
                block_first = bx * kRows
                for tid in range(kRows):
                    s = block_first + tid; valid = s < L
                    kk = row(kb, stride, s) * scale; vv = row(vb, stride, s); dk = np.zeros(hs); dv = np.zeros(hs)
                    tile_first = block_first
                    while tile_first < L:
                        for r in range(kRows):
                            t = tile_first + r; q = row(qb, stride, t); dy = row(dyb, C, t)
                            lt = lse[rs + t] if t < L else 0; dt = D[rs + t] if t < L else 0
                            score = kk @ q; dp = vv @ dy
                            if valid and s <= t and t < L:
                                p = np.exp(score - lt); ds = p * (dp - dt); dv += p * dy; dk += ds * q
                        tile_first += kRows
                    if s < T:
                        base = (b * T + s) * stride + C + h * hs
                        dqkv[base:base + hs] = scale * dk if valid else 0
                        dqkv[base + C:base + C + hs] = dv if valid else 0
    # reference
    X = qkv.reshape(B, T, 3, NH, hs); Q, K, V = X[:, :, 0], X[:, :, 1], X[:, :, 2]; dY = dout.reshape(B, T, NH, hs)
    O = np.zeros((B, T, NH, hs)); dQ = np.zeros_like(O); dK = np.zeros_like(O); dV = np.zeros_like(O)
    for b in range(B):
        Lb = lengths[b]
        for h in range(NH):
            S = scale * Q[b, :Lb, h] @ K[b, :Lb, h].T
            S = np.where(np.tril(np.ones((Lb, Lb))) > 0, S, -np.inf)
            P = np.exp(S - S.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
            O[b, :Lb, h] = P @ V[b, :Lb, h]
            dP = dY[b, :Lb, h] @ V[b, :Lb, h].T; dV[b, :Lb, h] = P.T @ dY[b, :Lb, h]
            dS = P * (dP - (P * dP).sum(1, keepdims=True)) * scale
            dQ[b, :Lb, h] = dS @ K[b, :Lb, h]; dK[b, :Lb, h] = dS.T @ Q[b, :Lb, h]
    G = dqkv.reshape(B, T, 3, NH, hs)
    errs = (np.abs(out.reshape(B, T, NH, hs) - O).max(), np.abs(G[:, :, 0] - dQ).max(),
            np.abs(G[:, :, 1] - dK).max(), np.abs(G[:, :, 2] - dV).max())
    nan = np.isnan(dqkv).sum() + np.isnan(out).sum()
    print(f"T={T} hs={hs} L={lengths}: out {errs[0]:.2e} dq {errs[1]:.2e} dk {errs[2]:.2e} "
          f"dv {errs[3]:.2e} NaN {nan}")
    return max(errs) < 1e-12 and nan == 0
for case in ((2, 37, 2, 5, [37, 1]), (1, 70, 1, 8, [65]), (2, 64, 1, 4, [64, 33])):
    ok &= run(*case)
print("cuda_index_check:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
