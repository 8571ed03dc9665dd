"""The calibration fit recovers known coefficients from synthetic timings, reports its held-out
error, and the profile it assembles follows docs/profile-schema.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibrate import fit
from calibrate.profile import build_profile, validate_profile, write_profile

LAYERS = 32


def decode_rows(coef: dict[tuple[str, int], tuple[float, float, float]], noise: float = 0.0,
                seed: int = 0) -> list[dict]:
    """Per-layer decode timings from known per-layer (intercept, per-seq, per-KV-token) coefficients."""
    rng = np.random.default_rng(seed)
    rows = []
    for (dtype, bs), (a, b, c) in coef.items():
        for i, (batch, ctx) in enumerate((bt, cx) for bt in (1, 4, 16, 64) for cx in (512, 2048, 8192)):
            t = (a + b * batch + c * batch * ctx) * (1 + noise * rng.standard_normal())
            rows.append({"component": "decode", "kv_dtype": dtype, "block_size": bs, "batch": batch,
                         "context_len": ctx, "seconds": t, "holdout": int(i % 4 == 2)})
    return rows


def test_nnls_relative_recovers_exact_coefficients() -> None:
    x = np.array([[1.0, b, b * c] for b in (1, 2, 8, 32) for c in (100, 1000, 10000)])
    true = np.array([4e-6, 3e-7, 2e-10])
    got = fit.nnls_relative(x, x @ true)
    np.testing.assert_allclose(got, true, rtol=1e-6)


def test_nnls_relative_keeps_coefficients_non_negative() -> None:
    x = np.array([[1.0, b, b * c] for b in (1, 2, 8, 32) for c in (100, 1000, 10000)])
    y = x @ np.array([4e-5, -1e-7, 2e-10])         # a negative per-seq term cannot be a cost
    got = fit.nnls_relative(x, y)
    assert (got >= 0).all() and got[2] > 0


def test_decode_fit_scales_by_layers_and_reports_held_out_error() -> None:
    truth = {("auto", 16): (5e-6, 2e-8, 1.5e-10), ("fp8", 16): (5e-6, 2e-8, 0.8e-10),
             ("auto", 128): (4e-6, 1e-8, 1.4e-10)}
    table, errors = fit.fit_decode(decode_rows(truth), LAYERS)
    for (dtype, bs), (a, b, c) in truth.items():
        got = table[dtype][str(bs)]
        assert got["intercept_s"] == pytest.approx(LAYERS * a, rel=1e-6)
        assert got["s_per_seq"] == pytest.approx(LAYERS * b, rel=1e-6)
        assert got["s_per_kv_token"] == pytest.approx(LAYERS * c, rel=1e-6)
    assert errors["decode_attention"]["held_out_points"] == 9
    assert errors["decode_attention"]["max_rel_err"] < 1e-6


def test_decode_fit_error_with_noise_is_about_the_noise() -> None:
    truth = {("auto", 16): (5e-6, 2e-8, 1.5e-10)}
    _, errors = fit.fit_decode(decode_rows(truth, noise=0.02, seed=1), LAYERS)
    e = errors["decode_attention"]
    assert e["held_out_points"] == 3 and 0 < e["median_rel_err"] < 0.08


def test_prefill_fit_recovers_pairs_coefficient() -> None:
    a, b, c = 8e-6, 1e-8, 3e-12
    rows = []
    for i, (q, p) in enumerate((q, p) for q in (16, 256, 1024, 4096) for p in (0, 1024, 8192)):
        pairs = q * (p + (q + 1) / 2)
        rows.append({"component": "prefill", "kv_dtype": "auto", "block_size": 16, "batch": 1, "q_len": q,
                     "prefix_len": p, "seconds": a + b * q + c * pairs, "holdout": int(i % 4 == 2)})
    table, errors = fit.fit_prefill(rows, 2)
    got = table["auto"]["16"]
    assert got["s_per_pair"] == pytest.approx(2 * c, rel=1e-6)
    assert got["s_per_query_token"] == pytest.approx(2 * b, rel=1e-6)
    assert errors["prefill_attention"]["held_out_points"] == 3


def test_linear_table_sums_layers_plus_lm_head_and_interpolates_held_out_points() -> None:
    rows = []
    for holdout, tokens in [(0, t) for t in (1, 16, 256, 4096)] + [(1, t) for t in (8, 1000)]:
        for gemm, per_token in (("qkv", 1e-8), ("o", 1e-8), ("gate_up", 3e-8), ("down", 2e-8), ("lm_head", 5e-8)):
            rows.append({"component": "linear", "gemm": gemm, "tokens": tokens,
                         "seconds": 1e-5 + per_token * tokens, "holdout": holdout})
    table, errors = fit.fit_linear(rows, 4)
    assert table["tokens"] == [1.0, 16.0, 256.0, 4096.0]
    assert table["seconds"][0] == pytest.approx(4 * (4e-5 + 7e-8) + 1e-5 + 5e-8)
    assert errors["linear"]["held_out_points"] == 2 and errors["linear"]["max_rel_err"] < 1e-9


def test_swap_fit_prices_a_block_as_two_copies_per_layer() -> None:
    rows = [{"component": "swap", "num_copies": n, "bytes": n * bs * 1024, "seconds": n * (3e-6 + bs * 1024 / 25e9),
             "holdout": int(i % 4 == 2)} for i, (n, bs) in enumerate((n, bs) for n in (1, 8, 64) for bs in (8, 32, 128))]
    swap, errors = fit.fit_swap(rows, 32)
    assert swap["s_per_block_copy"] == pytest.approx(64 * 3e-6, rel=1e-6)
    assert swap["s_per_byte"] == pytest.approx(1 / 25e9, rel=1e-6)
    assert errors["swap"]["held_out_points"] == 2


def _profile() -> dict:
    truth = {("auto", 16): (5e-6, 2e-8, 1.5e-10)}
    decode, err = fit.fit_decode(decode_rows(truth), LAYERS)
    return build_profile(gpu="H100-SXM", model="llama-3-8b", tp=1, provenance={"gpu_name": "test"},
                         linear={"tokens": [1.0, 2.0], "seconds": [1e-3, 1.1e-3]}, decode=decode,
                         prefill={"auto": {"16": {"intercept_s": 0.0, "s_per_query_token": 1e-7, "s_per_pair": 1e-12}}},
                         swap={"s_per_block_copy": 1e-4, "s_per_byte": 4e-11}, fit_error=err, csv_name="x.csv")


def test_profile_validates_and_round_trips(tmp_path: Path) -> None:
    prof = _profile()
    assert validate_profile(prof) == []
    path = write_profile(tmp_path, "x", prof, [{"component": "decode", "seconds": 1e-5}])
    again = json.loads(path.read_text())
    assert validate_profile(again) == [] and (tmp_path / "x.csv").read_text().startswith("component,")
    cost_model = pytest.importorskip("sim.cost_model")
    loaded = cost_model.profile_from_dict(again, str(path))   # the simulator's own loader accepts it
    assert loaded.kind == "calibrated" and 16 in loaded.decode_attention["auto"]


@pytest.mark.parametrize("breakage, complaint", [
    (lambda p: p.update(schema="v0"), "schema"),
    (lambda p: p["linear"].update(tokens=[2.0, 1.0]), "linear"),
    (lambda p: p["decode_attention"]["auto"]["16"].update(s_per_seq=-1.0), "decode_attention.auto.16"),
    (lambda p: p["decode_attention"]["auto"].update({"x": {}}), "decode_attention.auto.x"),
    (lambda p: p["swap"].pop("s_per_byte"), "swap"),
])
def test_profile_validation_names_the_problem(breakage, complaint: str) -> None:
    prof = _profile()
    breakage(prof)
    problems = validate_profile(prof)
    assert problems and any(p.startswith(complaint) for p in problems), problems
