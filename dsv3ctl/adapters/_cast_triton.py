"""Fused Triton kernel for the GPU cast: FP8 bytes + block scales -> BF16 in one pass (read 1 B, write
2 B per element). Imported only by :class:`dsv3ctl.adapters.cast.TorchDequant` when triton is present.

Semantics are those of deepseek-ai/DeepSeek-V3 ``inference/kernel.py`` ``weight_dequant`` @ 9b4e9788: each
program owns one 128x128 block, loads it under a bounds mask (partial edge blocks), multiplies in
float32 by the block's scale ``s[pid_m, pid_n]`` and stores BF16 (float32 -> bf16 round-to-nearest-even).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _dequant_kernel(x_ptr, s_ptr, y_ptr, M, N, NB, BLOCK: tl.constexpr):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rows = pm * BLOCK + tl.arange(0, BLOCK)
    cols = pn * BLOCK + tl.arange(0, BLOCK)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    raw = tl.load(x_ptr + offs, mask=mask, other=0)
    x = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    s = tl.load(s_ptr + pm * NB + pn)
    tl.store(y_ptr + offs, (x * s).to(tl.bfloat16), mask=mask)


def dequant(w: Any, s: Any, block: int = 128) -> Any:
    """w: uint8 cuda [M, N] (FP8 e4m3fn bits), s: float32 cuda [ceil(M/128), ceil(N/128)] -> bf16 [M, N]."""
    m, n = w.shape
    w = w.contiguous()
    s = s.contiguous()
    y = torch.empty((m, n), dtype=torch.bfloat16, device=w.device)
    grid = (triton.cdiv(m, block), triton.cdiv(n, block))
    _dequant_kernel[grid](w, s, y, m, n, s.shape[1], BLOCK=block)
    return y
