#!/usr/bin/env python3
"""CPU-only check of cuda/decode.cu's fast decode paths (HH_CUDA_FAST_DECODE=1), no GPU
needed: replays their index logic and arithmetic in numpy float32 and compares with plain
math.
  1. gumbel(): G over all 2^24 values of u: its largest value is kGumbelMax, it never
     decreases with u (the rounding steps are monotone), and G ≤ −log(1 − u) (stage B).
  2. attention_decode_warps_kernel: every head dimension is some lane's exactly once (with
     and without float2 pairs), every key some warp's exactly once (batches of kUnroll, then
     single keys), the xor-butterfly sum ends with the same bits in all 32 lanes, and the
     warps' online softmax combined in warp order matches a float64 softmax to 1e-5.
  3. sample_rows_pruned_kernel: pass 1's argmax, the threshold, stages A and B, the per-warp
     queue (ballot, ranks, flush of 32, move down) and the (score, index) rule give the
     brute-force Gumbel-max token on rows of several kinds; prints how much was pruned.
  /usr/bin/python3 scripts/decode_fast_check.py
"""
import math

from replay_checks import Checks, numpy_or_skip

np = numpy_or_skip("decode_fast_check")
f32 = np.float32
check = Checks("decode_fast_check")


# ---- 1. the Gumbel noise's range, from the exact u limits ----
K_GUMBEL_MAX = f32(16.6355324)  # cuda/decode.cu kGumbelMax


def gumbel_of_u(u):  # float32 u -> float32 G, the logs in double as gumbel_of_u()
    inner = np.log(u.astype(np.float64)).astype(f32)
    return -(np.log(-inner.astype(np.float64)).astype(f32))


def u_of_bits(k):  # gumbel_u() from the 24 bits
    u = (k.astype(f32) + f32(0.5)) * f32(1.0 / 16777216.0)
    return np.minimum(u, f32(1.0) - f32(1.0 / 16777216.0))


k_all = np.arange(1 << 24, dtype=np.uint32)
u_all = u_of_bits(k_all)
g_all = gumbel_of_u(u_all)
print("G over all u: min %.9g max %.9g (kGumbelMax %.9g)"
      % (g_all.min(), g_all.max(), K_GUMBEL_MAX))
check(g_all.max() == K_GUMBEL_MAX, "the largest G is kGumbelMax")
check(abs(float(g_all.min()) + 2.8523628) < 1e-6, "the least G is -2.8523628")
check(bool(np.all(np.diff(g_all) >= 0)), "G never decreases with u")
w_all = f32(1.0) - u_all  # 1 − u as the kernel computes it
slack_b = float(np.max(g_all.astype(np.float64) + np.log(w_all.astype(np.float64))))
print("max over u of G + log(1 - u): %.3g (stage B assumes <= ~1e-6)" % slack_b)
check(slack_b <= 2e-6, "G <= -log(1 - u) up to float rounding")
del k_all, w_all

# ---- 2. attention_decode, warp-parallel ----
W = 8  # kFastDecodeWarps


def lane_dim(lane, j, pairs):
    return 64 * (j // 2) + 2 * lane + (j % 2) if pairs else lane + 32 * j


for hs in range(1, 257):
    D = (hs + 31) // 32
    for pairs in ([False, True] if hs % 64 == 0 else [False]):
        dims = [lane_dim(lane, j, pairs) for lane in range(32) for j in range(D)]
        dims = [d for d in dims if d < hs]
        check(sorted(dims) == list(range(hs)), "dims of hs=%d pairs=%s" % (hs, pairs))
        if pairs:
            check(all(lane_dim(l, j, True) < hs for l in range(32) for j in range(D)),
                  "pairs stay inside hs=%d" % hs)


def warp_batches(warp, n, U):  # the key batches of warp `warp`, in its order
    out, t = [], warp
    while t + (U - 1) * W < n:
        out.append([t + u * W for u in range(U)])
        t += U * W
    while t < n:
        out.append([t])
        t += W
    return out


def butterfly(vals):  # vals[32] float32: the xor shuffle sum as the kernel does it
    s = vals.copy()
    for off in (16, 8, 4, 2, 1):
        s = (s + s[np.arange(32) ^ off]).astype(f32)
    return s


def decode_replay(q, K, Vv, n, hs, pairs, U, scale):
    D = (hs + 31) // 32
    dmap = np.array([[lane_dim(l, j, pairs) for j in range(D)] for l in range(32)])
    valid = dmap < hs
    dclip = np.where(valid, dmap, 0)

    def lanes(vec):  # [32, D] of a head vector, 0 where absent
        return np.where(valid, vec[dclip], f32(0))

    ql = lanes(q)
    wmax = np.full(W, -np.inf, dtype=f32)
    wsum = np.zeros(W, dtype=f32)
    wacc = np.zeros((W, hs), dtype=f32)
    seen = []
    for w in range(W):
        acc = np.zeros((32, D), dtype=f32)
        run_max, run_sum = f32(-np.inf), f32(0)
        for batch in warp_batches(w, n, U):
            seen += batch
            s = []
            for t in batch:
                part = np.zeros(32, dtype=f32)
                kl = lanes(K[t])
                for j in range(D):
                    part = (part + ql[:, j] * kl[:, j]).astype(f32)
                tot = butterfly(part)
                check(bool(np.all(tot == tot[0])), "butterfly sum equal in all lanes")
                s.append(f32(tot[0] * f32(scale)))
            new_max = f32(max([run_max] + s))
            shift = f32(0) if new_max == -np.inf else new_max
            corr = f32(np.exp(f32(run_max - shift)))
            run_sum = f32(run_sum * corr)
            acc = (acc * corr).astype(f32)
            for t, st in zip(batch, s):
                p = f32(np.exp(f32(st - shift)))
                run_sum = f32(run_sum + p)
                acc = (acc + p * lanes(Vv[t])).astype(f32)
            run_max = new_max
        wmax[w], wsum[w] = run_max, run_sum
        for l in range(32):
            for j in range(D):
                if valid[l, j]:
                    wacc[w, dmap[l, j]] = acc[l, j]
    check(sorted(seen) == list(range(n)), "keys 0..n-1 once each (n=%d)" % n)
    max_all = f32(np.max(wmax))
    factor = np.array([f32(np.exp(f32(m - max_all))) if m > -np.inf else f32(0) for m in wmax],
                      dtype=f32)
    total = f32(0)
    for w in range(W):
        total = f32(total + wsum[w] * factor[w])
    out = np.zeros(hs, dtype=f32)
    for w in range(W):
        out = (out + wacc[w] * factor[w]).astype(f32)
    return (out * f32(f32(1) / total)).astype(f32)


rng = np.random.default_rng(0)
worst = 0.0
for hs, n, qscale in [(64, 200, 1.5), (64, 200, 3.0), (64, 1, 1.5), (64, 2, 1.5), (64, 33, 1.5),
                      (16, 37, 1.5), (48, 20, 1.5), (96, 9, 1.5), (128, 70, 1.5), (160, 8, 1.5),
                      (256, 20, 1.0)]:
    D = (hs + 31) // 32
    U = 4 if D <= 2 else 2
    for pairs in ([False, True] if hs % 64 == 0 else [False]):
        q = rng.uniform(-qscale, qscale, hs).astype(f32)
        K = rng.uniform(-qscale, qscale, (n, hs)).astype(f32)
        Vv = rng.uniform(-1, 1, (n, hs)).astype(f32)
        scale = 1.0 / math.sqrt(hs)
        got = decode_replay(q, K, Vv, n, hs, pairs, U, scale)
        s = (K.astype(np.float64) @ q.astype(np.float64)) * scale
        p = np.exp(s - s.max())
        ref = (p / p.sum()) @ Vv.astype(np.float64)
        rms = math.sqrt(float(np.mean(ref ** 2)))
        err = float(np.max(np.abs(got - ref) / (np.abs(ref) + rms)))
        worst = max(worst, err)
        check(err <= 1e-5, "attention hs=%d n=%d pairs=%s: error %.3g" % (hs, n, pairs, err))
print("attention_decode replay: worst error %.3g of 1e-5 (relative, as expect_close)" % worst)

# ---- 3. sample_rows, pruned ----
THREADS = 512  # kSampleThreads
WARPS = THREADS // 32
K_BOUND = f32(K_GUMBEL_MAX + f32(1.0))  # kGumbelMax + kPruneSlack
M64 = np.uint64((1 << 64) - 1)


def mix64(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
        return z ^ (z >> np.uint64(31))


def noise_u(seed, vs):
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.uint64(0x9e3779b97f4a7c15) * (vs.astype(np.uint64) + np.uint64(1))
    return u_of_bits((mix64(z) >> np.uint64(40)).astype(np.uint32))


def fma32(a, b, c):  # one rounding (the product is exact in double)
    return f32(np.float64(a) * np.float64(b) + np.float64(c))


def brute(row, seed, inv_t):  # sample_rows_kernel's token: scores > −∞, ties to the first
    V = len(row)
    g = gumbel_of_u(noise_u(seed, np.arange(V)))
    score = (row * inv_t).astype(f32) + g
    score = np.where(np.isnan(score), -np.inf, score)
    best = float(np.max(score))
    if not best > -np.inf:
        return 0
    return int(np.flatnonzero(score == best)[0])


def pruned(row, seed, temperature):
    V = len(row)
    inv_t = f32(f32(1) / f32(temperature))
    finite = row > -np.inf
    # pass 1's argmax: the first column of the maximum (threads then warps by smaller index)
    arg = int(np.argmax(np.where(finite, row, -np.inf))) if finite.any() else V
    thr = f32(-np.inf)
    if arg < V:
        g = gumbel_of_u(noise_u(seed, np.array([arg])))[0]
        thr = f32(min(fma32(row[arg], inv_t, g), f32(f32(row[arg] * inv_t) + g)))
    stats = dict(a=0, b=0, evaluated=0)
    best_score = np.full(32 * WARPS, -np.inf, dtype=f32).reshape(WARPS, 32)
    best = np.full((WARPS, 32), V)
    for warp in range(WARPS):
        wthr = thr
        queue, count = [None] * 64, 0

        def consider(lane, v):
            g = gumbel_of_u(noise_u(seed, np.array([v])))[0]
            sc = f32(f32(row[v] * inv_t) + g)
            bs, bv = best_score[warp, lane], best[warp, lane]
            if sc > bs or (sc == bs and sc > -np.inf and v < bv):
                best_score[warp, lane], best[warp, lane] = sc, v
            stats["evaluated"] += 1

        for v0 in range(warp * 32, V, THREADS):
            keep = [False] * 32
            for lane in range(32):
                v = v0 + lane
                if v >= V:
                    continue
                x = row[v]
                bound = max(fma32(x, inv_t, K_BOUND), f32(f32(x * inv_t) + K_BOUND))
                k = not (bound < wthr)
                if k:
                    stats["a"] += 1
                if k and abs(float(wthr)) <= 1048576.0:
                    u = noise_u(seed, np.array([v]))[0]
                    with np.errstate(over="ignore"):
                        e = np.exp(fma32(x, inv_t, f32(f32(1.0) - wthr)))
                    k = not (f32(1) - u > e)
                if k:
                    stats["b"] += 1
                keep[lane] = k
            ranks = np.cumsum(keep) - keep  # popc(ballot & lanes below)
            for lane in range(32):
                if keep[lane]:
                    queue[count + ranks[lane]] = v0 + lane
            count += sum(keep)
            if count >= 32:
                for lane in range(32):
                    consider(lane, queue[lane])
                for lane in range(count - 32):
                    queue[lane] = queue[lane + 32]
                count -= 32
                wthr = f32(max(wthr, np.max(best_score[warp])))
        for lane in range(count):
            consider(lane, queue[lane])
    flat_s, flat_b = best_score.ravel(), best.ravel()
    b_s, b_v = flat_s[0], flat_b[0]
    for s, v in zip(flat_s[1:], flat_b[1:]):
        if s > b_s or (s == b_s and v < b_v):
            b_s, b_v = s, v
    return (0 if b_v >= V else int(b_v)), stats


V = 50257
kinds = {
    "gpt2-like N(-80, 3)": lambda r: (3 * r.standard_normal(V) - 80).astype(f32),
    "flat N(0, 1)": lambda r: r.standard_normal(V).astype(f32),
    "one huge max": lambda r: np.where(np.arange(V) == 1234, f32(1000),
                                       (3 * r.standard_normal(V)).astype(f32)).astype(f32),
    "all equal": lambda r: np.full(V, 1.5, dtype=f32),
    "every third -inf": lambda r: np.where(np.arange(V) % 3 == 0, f32(-np.inf),
                                           (3 * r.standard_normal(V)).astype(f32)).astype(f32),
    "near 1e7 (ties)": lambda r: (f32(1e7) + np.round(3 * r.standard_normal(V))).astype(f32),
}
print("sample_rows pruned replay, V = %d: columns kept by stage A, by stage B, noise evaluated"
      % V)
for i, (name, make) in enumerate(kinds.items()):
    row = make(np.random.default_rng(10 + i))
    for temperature in (0.5, 1.0, 2.0):
        seed = 0xabc + 17 * i + int(temperature * 4)
        want = brute(row, seed, f32(f32(1) / f32(temperature)))
        got, st = pruned(row, seed, temperature)
        check(got == want, "%s T=%g: pruned %d, brute force %d" % (name, temperature, got, want))
        print("  %-20s T=%-3g token %5d  A %5d  B %5d  evaluated %5d" %
              (name, temperature, got, st["a"], st["b"], st["evaluated"]))

check.finish()
