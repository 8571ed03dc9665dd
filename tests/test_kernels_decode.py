"""Paged decode attention (Triton) against the gather-then-softmax PyTorch reference.

Without a GPU the kernel runs on Triton's CPU interpreter with small shapes; with one, at full size
(Llama-3-8B heads, long contexts).  Every KV dtype, block sizes 8 to 128, GQA/MQA/MHA, shuffled
block tables, partial last blocks and the split-KV path (including splits with no tokens) are covered.
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

from calibrate.kernels.decode import choose_num_splits, paged_decode_attention  # noqa: E402
from calibrate.kernels.reference import make_paged_kv, ref_decode  # noqa: E402

DEVICE = "cuda" if GPU else "cpu"
TOL = {"fp16": 2e-3, "bf16": 1.2e-2, "fp8": 2e-3, "int8": 2e-3}

# (kv_dtype, block_size, num_heads, num_kv_heads, head_dim, context_lens, num_splits)
CPU_CASES = [
    ("fp16", 16, 4, 2, 32, [1, 17, 64], None),
    ("bf16", 8, 8, 2, 64, [45, 9], 3),
    ("fp8", 32, 4, 4, 32, [100, 33], 2),
    ("int8", 128, 4, 1, 32, [130, 5], None),
    ("fp8", 8, 4, 2, 32, [50, 3], 4),          # the short sequence leaves three splits empty
    ("int8", 16, 6, 2, 48, [31, 16], 2),       # head_dim not a power of two, group of 3
    ("fp16", 64, 4, 2, 32, [65, 128], 2),
    ("bf16", 32, 4, 2, 32, [70], 1),
]
GPU_CASES = [
    (dt, bs, 32, 8, 128, lens, splits)
    for dt in ("fp16", "bf16", "fp8", "int8")
    for bs, lens, splits in ((8, [1, 700, 4097], None), (16, [8192, 3, 1000, 2048], None),
                             (32, [513, 16384], 7), (128, [4096] * 8, 1), (64, [300, 12000], None))
] + [("fp16", 16, 64, 8, 128, [2000, 33], None), ("bf16", 16, 8, 1, 64, [5000], None)]


@pytest.mark.parametrize("case", GPU_CASES if GPU else CPU_CASES, ids=lambda c: f"{c[0]}-bs{c[1]}-h{c[2]}/{c[3]}")
def test_decode_matches_reference(case: tuple) -> None:
    kv_dtype, block_size, num_heads, num_kv_heads, head_dim, lens, splits = case
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    kv = make_paged_kv(lens, block_size, num_kv_heads, head_dim, kv_dtype, generator=gen, spare_blocks=3)
    q_dtype = torch.bfloat16 if kv_dtype == "bf16" else torch.float16
    q = torch.randn(len(lens), num_heads, head_dim, generator=gen).to(q_dtype)
    ref = ref_decode(q, kv, head_dim ** -0.5)
    kv_dev = [t.to(DEVICE) for t in (kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens)]
    out = paged_decode_attention(q.to(DEVICE), *kv_dev, k_scale=kv.k_scale, v_scale=kv.v_scale,
                                 num_splits=splits).float().cpu()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < TOL[kv_dtype], f"relative error {err:.2e}"


def test_unused_block_table_slots_are_never_read() -> None:
    """Poisoning every block a sequence does not own must not change its output."""
    gen = torch.Generator().manual_seed(7)
    kv = make_paged_kv([20, 9], 8, 2, 32, "fp16", generator=gen, spare_blocks=4)
    q = torch.randn(2, 4, 32, generator=gen).half()
    owned = {int(b) for s, n in enumerate(kv.context_lens.tolist()) for b in kv.block_tables[s, : -(-n // 8)]}
    for b in range(kv.k_cache.shape[0]):
        if b not in owned:
            kv.k_cache[b] = float("nan")
            kv.v_cache[b] = float("nan")
    # The owned partial last blocks are poisoned past the context too.
    for s, n in enumerate(kv.context_lens.tolist()):
        last = int(kv.block_tables[s, (n - 1) // 8])
        kv.k_cache[last, n % 8 or 8:] = float("nan")
        kv.v_cache[last, n % 8 or 8:] = float("nan")
    args = [t.to(DEVICE) for t in (kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens)]
    out = paged_decode_attention(q.to(DEVICE), *args, num_splits=2).float().cpu()
    assert torch.isfinite(out).all()


def test_shape_mismatch_is_refused() -> None:
    kv = make_paged_kv([5], 8, 2, 32, "fp16")
    with pytest.raises(ValueError, match="head shapes"):
        paged_decode_attention(torch.zeros(1, 3, 32, dtype=torch.float16), kv.k_cache, kv.v_cache,
                               kv.block_tables, kv.context_lens)


def test_split_count_covers_the_gpu_but_keeps_splits_long() -> None:
    assert choose_num_splits(1, 8, 16384, 64, num_sms=132) == 32          # 8 programs -> 33 wanted, cap 32
    assert choose_num_splits(64, 8, 16384, 64, num_sms=132) == 1           # 512 programs already
    assert choose_num_splits(1, 8, 600, 64, num_sms=132) == 1              # too short to split
    assert choose_num_splits(2, 1, 10**6, 64, num_sms=132) == 64           # capped
