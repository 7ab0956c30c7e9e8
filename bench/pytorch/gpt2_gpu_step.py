"""GPT-2 small training steps in PyTorch on one GPU: the anchor for `lm-bench gpu`.

The model is nanoGPT's architecture (pre-LN blocks, fused qkv projection, GELU-tanh MLP, tied
embedding head, vocab padded to 50304), written here from the GPT-2 definition; the step is
nanoGPT's GPU recipe: bf16 autocast, scaled_dot_product_attention (flash attention on Hopper),
fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1), grad clip 1.0, no dropout. Eager by
default; `--compile` adds torch.compile. Prints one line and, with --json, writes the figures.

Run by hand or by `cargo xtask gpu-check` on a machine with a GPU and PyTorch; never by CI.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab=50304, ctx=1024, d=768, layers=12, heads=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()
    torch.manual_seed(1337)
    dev = "cuda"
    model = Gpt().to(dev)
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), fused=True,
    )
    run = torch.compile(model) if a.compile else model
    t = 1024
    seq = torch.randint(0, 50304, (a.batch, t + 1), device=dev)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    first = step().item()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        s = time.perf_counter()
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - s) / a.steps)
    secs = sorted(times)[1]
    tok_s = a.batch * t / secs
    flops_per_token = 6 * n + 12 * 12 * 768 * t
    mfu = flops_per_token * tok_s / (a.peak_tflops * 1e12)
    mode = "compiled" if a.compile else "eager"
    print(f"pytorch {torch.__version__} {mode}: GPT-2 small, batch {a.batch}x{t}, bf16 autocast "
          f"{secs * 1e3:.1f} ms/step {tok_s:.0f} tok/s, MFU {100 * mfu:.1f}% of {a.peak_tflops:.0f} "
          f"TFLOP/s (first loss {first:.3f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"what": f"PyTorch {torch.__version__} {mode} GPT-2 small step",
                       "batch": a.batch, "context": t, "step_s": secs, "tokens_per_s": tok_s,
                       "mfu": mfu, "first_loss": first, "gpu": torch.cuda.get_device_name()}, f,
                      indent=1)


if __name__ == "__main__":
    main()
