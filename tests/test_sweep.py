"""Sweeps: axis validation, stable point ids, resume after an interruption, Student-t intervals, and
the same table from the serial, process-pool and Ray executors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sim.config import parse_yaml
from sim.errors import ScenarioError
from sim.sweep import expand, parse_axes, point_id, point_raw
from sim.sweep_cli import SweepInterrupted, run_sweep
from sim.sweep_store import aggregate_seeds, ci_halfwidth, load_table, t_quantile

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "scenarios" / "small.yaml"
BASE: dict[str, Any] = {"model": "llama-3-8b", "engine": {"block_size": 16}, "run": {"seed": 5},
                        "workload": {"arrival": {"process": "poisson", "rate": 4}}}


# -- axes and points ---------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "message"), [
    ({"blok_size": [8, 16]}, r"^s\.yaml: sweep\.blok_size: unknown axis; did you mean 'block_size'\?$"),
    ({"block_size": []}, r"^s\.yaml: sweep\.block_size: expected a non-empty list of integers"),
    ({"block_size": ["16", 32]}, r"^s\.yaml: sweep\.block_size: expected a list of integers \(got '16'\)$"),
    ({"enable_prefix_caching": [1, 0]}, r"sweep\.enable_prefix_caching: expected a list of true/false values \(got 1\)"),
    ({"rate": [1, "fast"]}, r"sweep\.rate: expected a list of numbers of requests/s"),
    ({"seeds": 0}, r"sweep\.seeds: expected a number of seeds >= 1"),
    ({"block_size": [8, 8]}, r"sweep\.block_size: values repeat"),
    ({"nonsense.key": [1]}, r"sweep\.nonsense\.key: unknown axis"),
])
def test_bad_axes_are_one_line_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as e:
        parse_axes(section, "s.yaml", BASE)
    assert "\n" not in str(e.value)


def test_axes_aliases_seeds_and_dotted_paths() -> None:
    axes = parse_axes({"seeds": 3, "request_rate": [2, 4.5, "inf"], "engine.watermark": [0.0, 0.01]}, "s.yaml", BASE)
    assert [(a.name, a.path) for a in axes] == [("rate", "workload.arrival.rate"),
                                                ("engine.watermark", "engine.watermark"), ("seed", "run.seed")]
    assert axes[-1].values == (5, 6, 7)            # base seed 5 + 0, 1, 2; seeds innermost
    points = expand(axes)
    assert len(points) == 3 * 2 * 3
    assert [p.labels["seed"] for p in points[:4]] == [5, 6, 7, 5]
    assert [p.index for p in points] == list(range(18))


def test_point_id_depends_only_on_the_overrides() -> None:
    a = point_id({"engine.block_size": 16, "workload.arrival.rate": 4})
    assert a == point_id({"workload.arrival.rate": 4, "engine.block_size": 16})
    assert a != point_id({"engine.block_size": 16, "workload.arrival.rate": 4.5})
    assert a != point_id({"engine.block_size": 16, "workload.arrival.rate": "4"})   # types matter
    assert len(a) == 16 and int(a, 16) >= 0                                           # hex prefix of a SHA-1


def test_point_raw_applies_overrides_to_a_copy() -> None:
    raw = point_raw(BASE | {"sweep": {"block_size": [8]}}, {"engine.block_size": 32, "hardware.gpu": "A100"}, "s.yaml")
    assert raw["engine"]["block_size"] == 32 and raw["hardware"]["gpu"] == "A100" and "sweep" not in raw
    assert BASE["engine"]["block_size"] == 16 and "hardware" not in BASE


# -- confidence intervals ----------------------------------------------------------------------

def test_ci_halfwidth_uses_student_t() -> None:
    # t(0.975, 4) = 2.776 (any t table); s = sqrt(2.5); half-width = 2.776 * sqrt(2.5) / sqrt(5)
    assert t_quantile(0.95, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.90, 9) == pytest.approx(1.8331, abs=1e-4)
    assert ci_halfwidth([1, 2, 3, 4, 5]) == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert ci_halfwidth([3.0, 3.0]) == 0.0
    assert math.isnan(ci_halfwidth([1.0]))


def test_aggregate_seeds_groups_configurations() -> None:
    table = pd.DataFrame({"block_size": [8, 8, 8, 16, 16, 16], "seed": [0, 1, 2] * 2, "status": "ok",
                          "p99_ttft_ms": [10.0, 12.0, 14.0, 20.0, 20.0, 20.0], "point_id": list("abcdef")})
    agg = aggregate_seeds(table, ["block_size", "seed"])
    assert list(agg["block_size"]) == [8, 16] and list(agg["num_seeds"]) == [3, 3]
    assert list(agg["p99_ttft_ms"]) == [12.0, 20.0]
    assert agg["p99_ttft_ms_ci"].iloc[0] == pytest.approx(t_quantile(0.95, 2) * 2.0 / math.sqrt(3))
    assert agg["p99_ttft_ms_ci"].iloc[1] == 0.0


# -- resume ------------------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = []


def counting_body(raw: dict[str, Any], file: str, record_steps: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    CALLS.append(raw)
    bs, rate = raw["engine"]["block_size"], raw["workload"]["arrival"]["rate"]
    rng = np.random.default_rng(raw["run"]["seed"])
    return {"p99_ttft_ms": float(bs * rate + rng.random()), "gpu": "X"}, pd.DataFrame({"start_s": [0.0]})


def test_resume_runs_only_the_missing_points(tmp_path: Path) -> None:
    axes = parse_axes({"block_size": [8, 16, 32], "rate": [1, 2, 4], "seeds": 2}, "s.yaml", BASE)

    def interrupt_after_7(n: int) -> None:
        if n == 7:
            raise KeyboardInterrupt

    CALLS.clear()
    with pytest.raises(SweepInterrupted) as e:
        run_sweep(BASE, "s.yaml", axes, tmp_path / "a", executor="serial", progress=False, body=counting_body,
                  on_point=interrupt_after_7)
    assert e.value.outcome.num_run == 7 and len(CALLS) == 7
    assert len(load_table(tmp_path / "a")) == 7                  # what finished is on disk
    CALLS.clear()
    resumed = run_sweep(BASE, "s.yaml", axes, tmp_path / "a", executor="serial", progress=False, body=counting_body)
    assert (resumed.num_run, resumed.num_skipped) == (11, 7) and len(CALLS) == 11
    again = run_sweep(BASE, "s.yaml", axes, tmp_path / "a", executor="serial", progress=False, body=counting_body)
    assert again.num_run == 0
    whole = run_sweep(BASE, "s.yaml", axes, tmp_path / "b", executor="serial", progress=False, body=counting_body)
    pd.testing.assert_frame_equal(resumed.table.drop(columns="wall_s"), whole.table.drop(columns="wall_s"))
    assert list(whole.table["point_index"]) == list(range(18))
    assert len(list((tmp_path / "b" / "steps").glob("*.parquet"))) == 1               # the showcase point only


def test_resume_refuses_a_different_base(tmp_path: Path) -> None:
    axes = parse_axes({"block_size": [8, 16]}, "s.yaml", BASE)
    run_sweep(BASE, "s.yaml", axes, tmp_path, executor="serial", progress=False, body=counting_body)
    other = BASE | {"run": {"seed": 6}}
    with pytest.raises(ScenarioError, match="holds a sweep of a different base scenario"):
        run_sweep(other, "s.yaml", axes, tmp_path, executor="serial", progress=False, body=counting_body)
    fresh = run_sweep(other, "s.yaml", axes, tmp_path, executor="serial", progress=False, body=counting_body, fresh=True)
    assert fresh.num_run == 2


# -- real simulator: executors agree bit for bit -----------------------------------------------

def small_sweep(out: Path, executor: str, jobs: int | None = None) -> pd.DataFrame:
    raw = parse_yaml(SMALL)
    raw["run"]["num_requests"] = 40
    axes = parse_axes({"block_size": [16, 32], "rate": [4, 16], "seeds": 2}, str(SMALL), raw)
    res = run_sweep(raw, str(SMALL), axes, out, executor=executor, jobs=jobs, progress=False)
    assert (res.table["status"] == "ok").all(), res.table["error"].tolist()
    return res.table.drop(columns="wall_s")


@pytest.fixture(scope="module")
def serial_table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return small_sweep(tmp_path_factory.mktemp("serial"), "serial")


def test_process_pool_matches_serial(serial_table: pd.DataFrame, tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(small_sweep(tmp_path, "local", jobs=2), serial_table, check_exact=True)
    assert len(serial_table) == 8 and serial_table["num_gpu_blocks"].gt(0).all()


def test_ray_matches_local(serial_table: pd.DataFrame, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'pagesim[ray]'")
    pd.testing.assert_frame_equal(small_sweep(tmp_path, "ray"), serial_table, check_exact=True)


def test_cli_bad_axis_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from sim.cli import main

    assert main(["sweep", str(SMALL), "--axis", "blok_size=8,16", "--no-report", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sweep.blok_size: unknown axis; did you mean 'block_size'?" in err
