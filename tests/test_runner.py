"""sim.runner.fit_lengths: `run.on_too_long` applied to requests longer than the model takes."""

from types import SimpleNamespace

import numpy as np

from sim.requests_table import RequestTable
from sim.runner import fit_lengths


def _setup(policy: str):
    # limit = min(max_model_len 100, 10 usable blocks x 16 tokens = 160) = 100 tokens
    sc = SimpleNamespace(run=SimpleNamespace(on_too_long=policy), engine=SimpleNamespace(block_size=16))
    dep = SimpleNamespace(max_model_len=100, capacity=SimpleNamespace(num_usable_gpu_blocks=10))
    table = RequestTable(np.array([0.0, 1.0, 2.0]), np.array([50, 90, 95]), np.array([20, 30, 20]),
                         segments=[((1, 40),), ((1, 40), (2, 50)), ((1, 40),)])
    return sc, dep, table


def test_truncate_clips_prompts_and_keeps_only_segments_that_still_fit() -> None:
    sc, dep, table = _setup("truncate")
    out, k = fit_lengths(sc, dep, table)  # type: ignore[arg-type]
    assert k == 2                                          # 90 + 30 and 95 + 20 exceed 100
    assert out.output_tokens.tolist() == [20, 30, 20]      # min(output, limit - 1)
    assert out.prompt_tokens.tolist() == [50, 70, 80]      # min(prompt, limit - output)
    # row 1's runs cover 90 tokens > its 70 left: dropped; row 2's 40 <= 80: kept
    assert out.segments == [((1, 40),), (), ((1, 40),)]


def test_drop_keeps_the_requests_that_fit() -> None:
    sc, dep, table = _setup("drop")
    out, k = fit_lengths(sc, dep, table)  # type: ignore[arg-type]
    assert k == 2 and out.prompt_tokens.tolist() == [50] and out.segments == [((1, 40),)]


def test_error_policy_leaves_the_table_to_the_fit_check() -> None:
    sc, dep, table = _setup("error")
    out, k = fit_lengths(sc, dep, table)  # type: ignore[arg-type]
    assert k == 0 and out is table
