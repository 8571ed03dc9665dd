"""Paged prefill / chunked-prefill attention (Triton) against the PyTorch reference.

Several sequences per call (varlen), each a chunk of new tokens behind a paged prefix (possibly
empty): the chunk attends to the whole prefix and causally to itself.  Interpreter with small
shapes on the CPU, full size on a GPU; every KV dtype and block sizes 8 to 128.
"""

from __future__ import annotations

import os
import sys
import zlib

import pytest

torch = pytest.importorskip("torch")
GPU = torch.cuda.is_available()
if not GPU:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"   # read when triton is imported: set it first
pytest.importorskip("triton")

from calibrate.kernels.prefill import paged_prefill_attention  # noqa: E402
from calibrate.kernels.reference import make_paged_kv, ref_prefill  # noqa: E402

DEVICE = "cuda" if GPU else "cpu"
TOL = {"fp16": 2e-3, "bf16": 1.2e-2, "fp8": 2e-3, "int8": 2e-3}

# (kv_dtype, block_size, num_heads, num_kv_heads, head_dim, [(q_len, prefix_len), ...], num_splits)
CPU_CASES = [
    ("fp16", 16, 4, 2, 32, [(20, 17), (1, 40), (33, 0)], None),
    ("bf16", 8, 8, 2, 32, [(16, 0), (5, 3)], 2),
    ("fp8", 32, 4, 4, 32, [(40, 64)], None),
    ("int8", 128, 4, 1, 32, [(17, 120), (3, 0)], 3),     # split-KV: some splits see nothing of some rows
    ("fp16", 64, 6, 2, 48, [(18, 50)], None),
    ("fp8", 8, 4, 2, 32, [(5, 60), (20, 0)], 4),
]
GPU_CASES = [
    (dt, bs, 32, 8, 128, seqs, None)
    for dt in ("fp16", "bf16", "fp8", "int8")
    for bs, seqs in ((8, [(512, 1000), (1, 3000)]), (16, [(700, 0), (64, 64), (2048, 4096)]),
                     (128, [(100, 257), (1000, 7)]), (32, [(16, 12000)]))
] + [("bf16", 16, 32, 8, 128, [(300, 5000), (40, 0)], 5)]


@pytest.mark.parametrize("case", GPU_CASES if GPU else CPU_CASES, ids=lambda c: f"{c[0]}-bs{c[1]}-h{c[2]}/{c[3]}")
def test_prefill_matches_reference(case: tuple) -> None:
    kv_dtype, block_size, num_heads, num_kv_heads, head_dim, seqs, splits = case
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    lens = [q + p for q, p in seqs]
    kv = make_paged_kv(lens, block_size, num_kv_heads, head_dim, kv_dtype, generator=gen, spare_blocks=2)
    cu = [0]
    for q_len, _ in seqs:
        cu.append(cu[-1] + q_len)
    q_dtype = torch.bfloat16 if kv_dtype == "bf16" else torch.float16
    q = torch.randn(cu[-1], num_heads, head_dim, generator=gen).to(q_dtype)
    ref = ref_prefill(q, cu, kv, head_dim ** -0.5)
    args = [t.to(DEVICE) for t in (kv.k_cache, kv.v_cache, kv.block_tables)]
    out = paged_prefill_attention(q.to(DEVICE), *args, torch.tensor(cu, dtype=torch.int32, device=DEVICE),
                                  kv.context_lens.to(DEVICE), max(q for q, _ in seqs),
                                  k_scale=kv.k_scale, v_scale=kv.v_scale, num_splits=splits).float().cpu()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < TOL[kv_dtype], f"relative error {err:.2e}"


def test_single_token_chunk_equals_decode() -> None:
    """A chunk of one new token is a decode step: both kernels must agree."""
    from calibrate.kernels.decode import paged_decode_attention
    gen = torch.Generator().manual_seed(3)
    kv = make_paged_kv([37, 12], 16, 2, 32, "fp16", generator=gen)
    q = torch.randn(2, 4, 32, generator=gen).half()
    args = [t.to(DEVICE) for t in (kv.k_cache, kv.v_cache, kv.block_tables)]
    lens = kv.context_lens.to(DEVICE)
    pre = paged_prefill_attention(q.to(DEVICE), *args, torch.tensor([0, 1, 2], dtype=torch.int32, device=DEVICE),
                                  lens, 1).float().cpu()
    dec = paged_decode_attention(q.to(DEVICE), *args, lens).float().cpu()
    assert torch.allclose(pre, dec, atol=2e-3, rtol=2e-3)
