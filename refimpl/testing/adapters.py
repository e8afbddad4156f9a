"""Adapters that give third-party kernels refimpl's signatures, so that ``check`` can run them.

``mamba_ssm`` and ``flash_attn`` already share refimpl's layouts; what an adapter does is move NumPy inputs
to the framework (device, dtype) and back. PyTorch's ``scaled_dot_product_attention`` uses another layout,
(b, h, s, d), and its own causal convention, so its adapter also transposes and, optionally, builds the
bottom-right causal mask that flash-attn and refimpl use.

For the CUDA libraries (on a machine with them installed), the same pattern is:

    import torch
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    from flash_attn import flash_attn_with_kvcache

    dev = lambda a: torch.as_tensor(a, device="cuda")          # keep float32, or .half() / .bfloat16()
    check(selective_scan_fn, "selective_scan", dtype="float32", convert=dev)
    check(lambda *a, **k: mamba_chunk_scan_combined(*a, chunk_size=256, **k), "ssd", dtype="bfloat16",
          convert=lambda a: dev(a).bfloat16() if a.dtype.kind == "f" else dev(a))
    check(flash_attn_with_kvcache, "attention_with_kvcache", dtype="float16",
          convert=lambda a: dev(a).half() if a.dtype.kind == "f" else dev(a).int())

(``selective_scan_fn`` takes A as float32 even for bf16 inputs, and ``cache_seqlens`` as int32.)
"""

from __future__ import annotations

import numpy as np


def torch_sdpa(q, k, v, *, causal=False, softmax_scale=None, return_lse=False, bottom_right=True):
    """``refimpl.attention.attention``'s signature on ``torch.nn.functional.scaled_dot_product_attention``.

    With ``bottom_right=False`` the causal mask is torch's own ``is_causal`` (aligned top-left); with True it
    is the bottom-right mask refimpl and flash-attn use. The lse, which SDPA does not return, is computed from
    the same scores when asked.
    """
    import torch
    import torch.nn.functional as F

    qt, kt, vt = (torch.as_tensor(np.asarray(a)).transpose(1, 2) for a in (q, k, v))  # (b, h, s, d)
    h, h_k = qt.shape[1], kt.shape[1]
    s_q, s_k = qt.shape[2], kt.shape[2]
    scale = softmax_scale if softmax_scale is not None else qt.shape[-1] ** -0.5
    mask = None
    if causal and bottom_right:
        mask = torch.ones(s_q, s_k, dtype=torch.bool).tril(diagonal=s_k - s_q)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal and not bottom_right,
                                         scale=scale, enable_gqa=h != h_k)
    out = out.transpose(1, 2)
    if not return_lse:
        return out
    kk = kt.repeat_interleave(h // h_k, dim=1)
    s = (qt @ kk.transpose(-1, -2)).double() * scale
    if causal:
        m = mask if mask is not None else torch.ones(s_q, s_k, dtype=torch.bool).tril()
        s = s.masked_fill(~m, float("-inf"))
    return out, torch.logsumexp(s, dim=-1)
