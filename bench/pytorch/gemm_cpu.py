"""PyTorch's CPU matrix products at the shapes of `lm-bench gemm` (bench/src/gemm.rs), for
docs/performance.md's side-by-side figures. Run by hand on the same machine (CI needs no Python):

    python bench/pytorch/gemm_cpu.py [THREADS]

f32: `torch.mm` (MKL as PyTorch ships it); bf16: `torch.mm` on bf16 tensors (oneDNN: AMX or
AVX512-BF16 where the CPU has them, f32 accumulation). Outputs reused (`out=`), median of the
same number of runs as the Rust bench after a warm-up; prints one line per product and a JSON
line at the end.
"""
import json
import statistics
import sys
import time

import torch

SHAPES = [
    ("2048³", (2048, 2048, 2048)),
    ("qkv 256×768×2304", (256, 768, 2304)),
    ("fc 256×768×3072", (256, 768, 3072)),
    ("proj 256×3072×768", (256, 3072, 768)),
    ("head 256×768×50257", (256, 768, 50257)),
    ("qkv 1024×768×2304", (1024, 768, 2304)),
    ("fc 1024×768×3072", (1024, 768, 3072)),
    ("proj 1024×3072×768", (1024, 3072, 768)),
    ("head 1024×768×50257", (1024, 768, 50257)),
]


def rate(m, k, n, dtype, runs):
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(m, k, generator=g) - 0.5).to(dtype)
    b = (torch.rand(k, n, generator=g) - 0.5).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2.0 * m * k * n / statistics.median(times)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    result = {"torch": torch.__version__, "threads": threads, "rates": {}}
    for name, (m, k, n) in SHAPES:
        runs = max(3, min(25, int(2e11 / (2.0 * m * k * n))))
        for label, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
            v = rate(m, k, n, dtype, runs)
            result["rates"][f"{label} {name}"] = v
            print(f"{label} {name:<24} {v / 1e9:8.0f} GFLOP/s")
    print(json.dumps(result))


main()
