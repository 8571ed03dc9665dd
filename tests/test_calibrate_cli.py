"""`pagesim calibrate` (calibrate.cli.main): refuses politely without a GPU, runs the whole
pipeline on tiny shapes with --interpret, and splits models per tensor-parallel rank."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from calibrate.cli import main
from calibrate.models import shard_shape
from calibrate.profile import validate_profile

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:   # not imported here: TRITON_INTERPRET must come first
    pytest.skip("triton is not installed", allow_module_level=True)


def test_without_gpu_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["--model", "llama-3-8b", "--tp", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "no CUDA GPU" in err
    assert not any(tmp_path.iterdir())


def test_unknown_model_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    rc = main(["--model", "gpt-5", "--out", str(tmp_path), "--interpret"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model 'gpt-5'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_interpret_mode_writes_a_valid_profile_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["--model", "llama-3-8b", "--tp", "1", "--out", str(tmp_path), "--interpret"])
    assert rc == 0
    prof = json.loads((tmp_path / "llama-3-8b-tp1.json").read_text())
    assert validate_profile(prof) == []
    assert prof["kind"] == "calibrated" and prof["provenance"]["timings_meaningful"] is False
    assert prof["measurements_csv"] == "llama-3-8b-tp1.csv"
    assert set(prof["decode_attention"]) == {"auto", "int8"} and prof["fit_error"]["decode_attention"]["held_out_points"] > 0
    with open(tmp_path / "llama-3-8b-tp1.csv") as f:
        components = {r["component"] for r in csv.DictReader(f)}
    assert components >= {"decode", "decode_sdpa", "prefill", "linear", "swap"}


def test_tensor_parallel_shards() -> None:
    s = shard_shape("llama-3-70b", 4)
    assert (s.num_layers, s.num_heads, s.num_kv_heads, s.intermediate_size, s.vocab_size) == (80, 16, 2, 7168, 32064)
    assert shard_shape("llama-3-8b", 16).num_kv_heads == 1           # KV heads replicated past tp = 8
    assert shard_shape("llama-3-8b", 1).gemm_shapes()["qkv"] == (4096, 6144)
    with pytest.raises(ValueError, match="split"):
        shard_shape("llama-3-8b", 3)
