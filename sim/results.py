"""Writing a results folder: summary.json, requests.parquet, steps.parquet, scenario.yaml.

Files are written to a temporary name and renamed, so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_results(out_dir: Path, summary: dict[str, Any], requests: pd.DataFrame, steps: pd.DataFrame,
                  scenario_raw: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(out_dir / "requests.parquet", requests)
    atomic_write_parquet(out_dir / "steps.parquet", steps)
    atomic_write_text(out_dir / "scenario.yaml", yaml.safe_dump(scenario_raw, sort_keys=False))
    body = dict(summary)
    if extra:
        body.update(extra)
    atomic_write_text(out_dir / "summary.json", json.dumps(_clean(body), indent=2, sort_keys=False) + "\n")
