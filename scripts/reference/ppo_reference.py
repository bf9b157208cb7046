"""PyTorch reference for PPO (src/train/ppo.cpp), computed in float64 and stored as float32:
- tests/fixtures/ppo_losses.safetensors: the clipped policy loss and the clipped value
  loss and their gradients (autograd);
- tests/fixtures/ppo_advantages.safetensors: step 3 of an iteration for a rollout of
  sequences of different lengths (one empty): per-token rewards with the KL penalty and
  the final reward, then GAE advantages (whitened) and returns, the KL of each sequence,
  and the explained variance.

    /usr/bin/python3 scripts/reference/ppo_reference.py [out_dir]
"""
import json
import os
import struct
import sys

import torch


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    n, clip, value_clip = 40, 0.2, 0.2
    d = torch.float64
    # Log-ratios spread over [-0.5, 0.5] so that some ratios fall outside [0.8, 1.2].
    logp_old = -torch.rand(n, generator=g, dtype=d) * 4 - 0.1
    logp = (logp_old + (torch.rand(n, generator=g, dtype=d) - 0.5)).requires_grad_()
    adv = torch.randn(n, generator=g, dtype=d)
    mask = (torch.rand(n, generator=g, dtype=d) > 0.25).to(d)

    ratio = torch.exp(logp - logp_old)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    policy_loss = -(surrogate * mask).sum() / mask.sum()
    policy_loss.backward()
    clip_fraction = (((ratio - 1).abs() > clip).to(d) * mask).sum() / mask.sum()
    approx_kl = (0.5 * (logp - logp_old) ** 2 * mask).sum() / mask.sum()

    values_old = torch.randn(n, generator=g, dtype=d)
    values = (values_old + (torch.rand(n, generator=g, dtype=d) - 0.5)).requires_grad_()
    returns = torch.randn(n, generator=g, dtype=d)
    v_clipped = values_old + torch.clamp(values - values_old, -value_clip, value_clip)
    value_loss = 0.5 * (torch.max((values - returns) ** 2, (v_clipped - returns) ** 2) * mask).sum() / mask.sum()
    value_loss.backward()

    save_safetensors(os.path.join(out_dir, "ppo_losses.safetensors"), {
        "logp": logp.detach(), "logp_old": logp_old, "advantages": adv, "mask": mask,
        "policy_loss": policy_loss.detach().reshape(1), "dlogp": logp.grad,
        "clip_fraction": clip_fraction.detach().reshape(1), "approx_kl": approx_kl.detach().reshape(1),
        "values": values.detach(), "values_old": values_old, "returns": returns,
        "value_loss": value_loss.detach().reshape(1), "dvalues": values.grad,
        "clip": torch.tensor([clip, value_clip], dtype=d),
    })
    print("wrote", os.path.join(out_dir, "ppo_losses.safetensors"),
          "policy_loss %.6f value_loss %.6f clip_fraction %.3f" % (policy_loss, value_loss, clip_fraction))


def advantages(out_dir):
    """Written the way TRL's PPOTrainer computes them, loop for loop, not from hh's code."""
    g = torch.Generator().manual_seed(8)
    d = torch.float64
    lengths = [5, 1, 0, 8, 3]
    beta, gamma, lam = 0.05, 0.97, 0.9  # gamma != 1 and != lambda: a swap shows
    n = sum(lengths)
    logp = -torch.rand(n, generator=g, dtype=d) * 3 - 0.05
    logp_ref = logp + (torch.rand(n, generator=g, dtype=d) - 0.4) * 0.6  # KL mostly > 0
    values = torch.randn(n, generator=g, dtype=d)
    scores = torch.randn(len(lengths), generator=g, dtype=d) * 2
    # Round the inputs to float32 first: the C++ side reads them as float32.
    logp, logp_ref, values, scores = (x.float().double() for x in (logp, logp_ref, values, scores))

    adv, ret, kl = [], [], []
    start = 0
    for i, L in enumerate(lengths):
        lp, lr, v = logp[start:start + L], logp_ref[start:start + L], values[start:start + L]
        r = -beta * (lp - lr)
        if L > 0:
            r[-1] += scores[i]
        a = torch.zeros(L, dtype=d)
        lastgaelam = 0.0
        for t in reversed(range(L)):
            nextvalue = v[t + 1] if t + 1 < L else 0.0
            delta = r[t] + gamma * nextvalue - v[t]
            lastgaelam = delta + gamma * lam * lastgaelam
            a[t] = lastgaelam
        adv.append(a)
        ret.append(a + v)
        kl.append((lp - lr).sum())
        start += L
    adv, ret = torch.cat(adv), torch.cat(ret)
    whitened = (adv - adv.mean()) / torch.sqrt(adv.var(unbiased=False) + 1e-8)
    explained_variance = 1 - (ret - values).var(unbiased=False) / ret.var(unbiased=False)

    path = os.path.join(out_dir, "ppo_advantages.safetensors")
    save_safetensors(path, {
        "lengths": torch.tensor(lengths, dtype=d), "logp": logp, "logp_ref": logp_ref,
        "values": values, "scores": scores, "advantages": whitened,
        "returns": ret, "kl": torch.stack(kl),
        "explained_variance": explained_variance.reshape(1),
        "beta_gamma_lambda": torch.tensor([beta, gamma, lam], dtype=d),
    })
    print("wrote", path, "explained_variance %.6f" % explained_variance)


if __name__ == "__main__":
    main()
    advantages(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
