#!/usr/bin/env python3
"""CPU-only check of the CUDA backend's index arithmetic (no GPU needed): emulates cuBLAS's
column-major (strided-batched) SGEMM on flat buffers and replays the exact calls of
cuda/matmul.cu and cuda/attention.cu, then replays cuda/attention_flash.cu's block/tile/row
index logic, and compares both with plain numpy math. Every difference printed should be
~1e-15 and no NaN may be left (outputs start as NaN: every element must be written).
  /usr/bin/python3 scripts/cuda_index_check.py
"""
import numpy as np
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
print("matmul fwd", np.abs(out.reshape(N, OC) - ref).max())
dinp = np.full(N * IC, np.nan)
gemm('N', 'N', IC, N, OC, 1.0, W, 0, IC, dout, 0, OC, 0.0, dinp, 0, IC)
print("matmul dinp", np.abs(dinp.reshape(N, IC) - dout.reshape(N, OC) @ W.reshape(OC, IC)).max())
dW0 = rng.standard_normal(OC * IC); dW = dW0.copy()
gemm('N', 'T', IC, OC, N, 1.0, inp, 0, IC, dout, 0, OC, 1.0, dW, 0, IC)
print("matmul dW", np.abs(dW.reshape(OC, IC) - (dW0.reshape(OC, IC) + dout.reshape(N, OC).T @ inp.reshape(N, IC))).max())

# ---- attention (materialised path), B sequences, NH heads ----
B, T, NH, hs = 2, 6, 3, 4
C = NH * hs
lengths = [6, 4]
qkv = rng.standard_normal(B * T * 3 * C)
dy = rng.standard_normal(B * T * C)
scale = 1 / np.sqrt(hs)
TT = T * T
saved = np.full(B * NH * TT, np.nan)
for b in range(B):
    q = b * T * 3 * C; k = q + C
    batched('T', 'N', T, T, hs, scale, qkv, k, 3 * C, hs, qkv, q, 3 * C, hs, 0.0, saved, b * NH * TT, T, TT, NH)
P = saved.reshape(B, NH, T, T).copy()
for b in range(B):
    for h in range(NH):
        for t in range(T):
            row = P[b, h, t]
            if t >= lengths[b]: row[:] = 0; continue
            e = np.exp(row[: t + 1] - row[: t + 1].max()); row[: t + 1] = e / e.sum(); row[t + 1:] = 0
saved = P.reshape(-1).copy()
out = np.full(B * T * C, np.nan)
for b in range(B):
    v = b * T * 3 * C + 2 * C
    batched('N', 'N', hs, T, T, 1.0, qkv, v, 3 * C, hs, saved, b * NH * TT, T, TT, 0.0, out, b * T * C, C, hs, NH)
# reference
X = qkv.reshape(B, T, 3, NH, hs)
Q, K, V = X[:, :, 0], X[:, :, 1], X[:, :, 2]  # B,T,NH,hs
Pref = np.zeros((B, NH, T, T)); Oref = np.zeros((B, T, NH, hs))
for b in range(B):
    for h in range(NH):
        S = scale * Q[b, :, h] @ K[b, :, h].T
        for t in range(lengths[b]):
            e = np.exp(S[t, : t + 1] - S[t, : t + 1].max()); Pref[b, h, t, : t + 1] = e / e.sum()
        Oref[b, :, h] = Pref[b, h] @ V[b, :, h]
print("attention P", np.abs(P - Pref).max(), "out", np.abs(out.reshape(B, T, NH, hs) - Oref).max())

# backward
dqkv = np.full(B * T * 3 * C, np.nan)
dp = np.full(NH * TT, np.nan)
for b in range(B):
    q = b * T * 3 * C; k = q + C; v = q + 2 * C
    dq, dk, dv = q, k, v
    p = b * NH * TT; d = b * T * C
    batched('T', 'N', T, T, hs, 1.0, qkv, v, 3 * C, hs, dy, d, C, hs, 0.0, dp, 0, T, TT, NH)
    batched('N', 'T', hs, T, T, 1.0, dy, d, C, hs, saved, p, T, TT, 0.0, dqkv, dv, 3 * C, hs, NH)
    for h in range(NH):  # softmax backward kernel, in place on dp
        for t in range(T):
            r = dp[h * TT + t * T: h * TT + (t + 1) * T]; pr = saved[p + h * TT + t * T: p + h * TT + (t + 1) * T]
            if t >= lengths[b]: r[:] = 0; continue
            dot = (pr[: t + 1] * r[: t + 1]).sum()
            new = np.zeros(T); new[: t + 1] = scale * pr[: t + 1] * (r[: t + 1] - dot); r[:] = new
    batched('N', 'N', hs, T, T, 1.0, qkv, k, 3 * C, hs, dp, 0, T, TT, 0.0, dqkv, dq, 3 * C, hs, NH)
    batched('N', 'T', hs, T, T, 1.0, qkv, q, 3 * C, hs, dp, 0, T, TT, 0.0, dqkv, dk, 3 * C, hs, NH)
# reference backward
dY = dy.reshape(B, T, NH, hs)
dQ = np.zeros_like(Q); dK = np.zeros_like(K); dV = np.zeros_like(V)
for b in range(B):
    for h in range(NH):
        Pm = Pref[b, h]
        dP = dY[b, :, h] @ V[b, :, h].T
        dV[b, :, h] = Pm.T @ dY[b, :, h]
        dS = Pm * (dP - (Pm * dP).sum(1, keepdims=True)) * scale
        dQ[b, :, h] = dS @ K[b, :, h]; dK[b, :, h] = dS.T @ Q[b, :, h]
G = dqkv.reshape(B, T, 3, NH, hs)
print("attention dq", np.abs(G[:, :, 0] - dQ).max(), "dk", np.abs(G[:, :, 1] - dK).max(), "dv", np.abs(G[:, :, 2] - dV).max())
print("NaN left in dqkv:", np.isnan(dqkv).sum(), " in out:", np.isnan(out).sum())


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
    print(f"T={T} hs={hs} L={lengths}: out {np.abs(out.reshape(B,T,NH,hs)-O).max():.2e} "
          f"dq {np.abs(G[:,:,0]-dQ).max():.2e} dk {np.abs(G[:,:,1]-dK).max():.2e} dv {np.abs(G[:,:,2]-dV).max():.2e} "
          f"NaN {np.isnan(dqkv).sum()+np.isnan(out).sum()}")
run(2, 37, 2, 5, [37, 1])
run(1, 70, 1, 8, [65])
run(2, 64, 1, 4, [64, 33])
