"""nanoGPT's GPT-2 small training step on the CPU at the shapes of `lm-bench gpt2`
(bench/src/gpt2.rs), for docs/performance.md's side-by-side figures. Run by hand on the same
machine (CI needs no Python):

    python bench/pytorch/gpt2_cpu_step.py [THREADS]

The model is `gpt2_gpu_step.py`'s (nanoGPT's architecture): 12 layers, 12 heads, width 768,
here with GPT-2's vocabulary of 50 257 as `lm-bench gpt2` has it, context 1 024, biases, tied
embedding, no dropout, `scaled_dot_product_attention`; AdamW (lr
6e-4, weight decay 0.1), gradient clipping at 1.0. f32, and bf16 products under
`torch.autocast("cpu", torch.bfloat16)` (f32 masters). Random tokens; median of 3 steps after a
warm-up step; prints one line per shape and precision and a JSON line at the end.
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_gpu_step import Gpt  # noqa: E402  (the same nanoGPT model, one definition)

V = 50257
SHAPES = [(4, 64), (1, 1024)]


def step_seconds(batch, t, bf16):
    torch.manual_seed(1337)
    model = Gpt(vocab=V)
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
