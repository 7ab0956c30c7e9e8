"""nanoGPT's GPT-2 small training step on the CPU at the shapes of `lm-bench gpt2`
(bench/src/gpt2.rs), for docs/performance.md's side-by-side figures. Run by hand on the same
machine (CI needs no Python):

    python bench/pytorch/gpt2_cpu_step.py [THREADS]

The model is nanoGPT's (Karpathy, model.py): 12 layers, 12 heads, width 768, vocabulary 50 257,
context 1 024, biases, tied embedding, no dropout, `scaled_dot_product_attention`; AdamW (lr
6e-4, weight decay 0.1), gradient clipping at 1.0. f32, and bf16 products under
`torch.autocast("cpu", torch.bfloat16)` (f32 masters). Random tokens; median of 3 steps after a
warm-up step; prints one line per shape and precision and a JSON line at the end.
"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

V, T_MAX, L, H, C = 50257, 1024, 12, 12, 768
SHAPES = [(4, 64), (1, 1024)]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T_MAX, C)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def step_seconds(batch, t, bf16):
    torch.manual_seed(1337)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    x = torch.randint(0, V, (batch, t))
    y = torch.randint(0, V, (batch, t))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    out = {}
    for batch, t in SHAPES:
        for bf16 in (False, True):
            name = f"{batch}x{t}_{'bf16' if bf16 else 'f32'}"
            secs = step_seconds(batch, t, bf16)
            out[name] = secs
            print(f"GPT-2 small step {batch}×{t}, {'bf16 autocast' if bf16 else 'f32'}: {secs * 1e3:.0f} ms")
    print(json.dumps({"torch": torch.__version__, "threads": threads, "step_s": out}))


if __name__ == "__main__":
    main()
