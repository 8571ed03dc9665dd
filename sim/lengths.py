"""Prompt and output length distributions for synthetic workloads.

Each side (``input``, ``output``) is one `LengthConfig` chosen by ``dist``:

- ``random``: vllm bench serve's random dataset (``--random-input-len``, ``--random-output-len``,
  ``--random-range-ratio``): an integer drawn uniformly from
  ``[floor(len * (1 - range_ratio)), ceil(len * (1 + range_ratio))]``; ``range_ratio: 0`` is a fixed
  length.  (vLLM also subtracts the tokenizer's special tokens from the input; we model token
  counts, so there are none.)
- ``fixed``: always ``value``.
- ``uniform``: an integer uniform on ``[low, high]`` (both included).
- ``lognormal``: ``exp(N(mu, sigma))`` rounded, with ``mu = ln(median)``, or given ``mean``
  ``mu = ln(mean) - sigma^2 / 2``; the usual shape of real prompt and answer lengths.
- ``empirical``: resampled with replacement (through the rng) from one column of a trace file,
  keeping that column's whole distribution, tails included.

Every draw is then clamped to ``[min, max]`` and to at least 1 token.  All randomness comes from
the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from sim.schema import Ctx, positive
from sim.traces import read_trace, resolve_path

Dist = Literal["random", "fixed", "uniform", "lognormal", "empirical"]

# Which optional keys each dist uses; any other one set by the user is an error (a typo'd intent).
_KEYS: dict[str, tuple[str, ...]] = {
    "random": ("len", "range_ratio"),
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("median", "mean", "sigma"),
    "empirical": ("path", "format", "column"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "random": ("len",), "fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("sigma",),
    "empirical": ("path",),
}


@dataclass(frozen=True, slots=True)
class LengthConfig:
    """One length distribution, in tokens; see the module docstring for each ``dist``."""

    dist: Dist = "random"
    len: int | None = None              # random: mean length (vllm --random-input-len / --random-output-len)
    range_ratio: float | None = None    # random: half-width as a fraction of len, in [0, 1) (vllm --random-range-ratio)
    value: int | None = None            # fixed
    low: int | None = None              # uniform, inclusive
    high: int | None = None             # uniform, inclusive
    median: float | None = None         # lognormal: exp(mu)
    mean: float | None = None           # lognormal: exp(mu + sigma^2/2), instead of median
    sigma: float | None = None          # lognormal: std of the log
    path: str | None = None             # empirical: trace file
    format: Literal["azure", "mooncake", "generic"] = "generic"   # empirical: trace format
    column: Literal["input", "output"] | None = None  # empirical: which column; default: this side
    min: int = 1                        # clamp floor (at least 1)
    max: int | None = None              # clamp ceiling, e.g. the model's max_model_len

    def validate(self, ctx: Ctx) -> None:
        used = _KEYS[self.dist]
        for f in fields(self):
            if f.name in {k for keys in _KEYS.values() for k in keys} - set(used):
                if getattr(self, f.name) not in (None, f.default):
                    raise ctx.at(f.name).error(f"not used by dist '{self.dist}' (it takes {', '.join(used)})")
        for key in _REQUIRED[self.dist]:
            if getattr(self, key) is None:
                raise ctx.at(key).error(f"required by dist '{self.dist}'")
        if self.dist == "random":
            positive(ctx, "len", self.len or 0)
            ratio = 0.0 if self.range_ratio is None else self.range_ratio
            if not 0.0 <= ratio < 1.0:
                raise ctx.at("range_ratio").error("must be in [0, 1)", self.range_ratio)
        elif self.dist == "fixed":
            positive(ctx, "value", self.value or 0)
        elif self.dist == "uniform":
            positive(ctx, "low", self.low or 0)
            if (self.high or 0) < (self.low or 0):
                raise ctx.at("high").error(f"must be >= low ({self.low})", self.high)
        elif self.dist == "lognormal":
            if (self.median is None) == (self.mean is None):
                raise ctx.at("median").error("give exactly one of median or mean")
            positive(ctx, "median" if self.median is not None else "mean", self.median or self.mean or 0)
            positive(ctx, "sigma", self.sigma or 0, allow_zero=True)
        positive(ctx, "min", self.min)
        if self.max is not None and self.max < self.min:
            raise ctx.at("max").error(f"must be >= min ({self.min})", self.max)


def _random_input() -> LengthConfig:
    return LengthConfig(dist="random", len=1024)   # vllm bench serve default --random-input-len


def _random_output() -> LengthConfig:
    return LengthConfig(dist="random", len=128)    # vllm bench serve default --random-output-len


@dataclass(frozen=True, slots=True)
class LengthsConfig:
    """``workload.lengths``: prompt and output length distributions (defaults: vllm bench random)."""

    input: LengthConfig = field(default_factory=_random_input)
    output: LengthConfig = field(default_factory=_random_output)


def sample_lengths(cfg: LengthConfig, count: int, rng: np.random.Generator, ctx: Ctx,
                   side: Literal["input", "output"]) -> np.ndarray:
    """``count`` int64 lengths drawn from ``cfg``, clamped to [max(min, 1), max]."""
    if cfg.dist == "random":
        assert cfg.len is not None
        ratio = cfg.range_ratio or 0.0
        low, high = math.floor(cfg.len * (1 - ratio)), math.ceil(cfg.len * (1 + ratio))
        draws = rng.integers(max(low, 1), max(high, 1) + 1, size=count)
    elif cfg.dist == "fixed":
        draws = np.full(count, cfg.value, dtype=np.int64)
    elif cfg.dist == "uniform":
        draws = rng.integers(cfg.low or 1, (cfg.high or 0) + 1, size=count)
    elif cfg.dist == "lognormal":
        sigma = cfg.sigma or 0.0
        mu = math.log(cfg.median) if cfg.median is not None else math.log(cfg.mean or 1.0) - sigma**2 / 2
        draws = np.rint(rng.lognormal(mu, sigma, size=count))
    else:
        assert cfg.path is not None
        table = read_trace(resolve_path(cfg.path, ctx), cfg.format, ctx=ctx.at("path"))
        if len(table) == 0:
            raise ctx.at("path").error(f"trace {cfg.path} has no rows to resample")
        pool = table.prompt_tokens if (cfg.column or side) == "input" else table.output_tokens
        draws = pool[rng.integers(0, len(pool), size=count)]
    upper = 2**53 if cfg.max is None else cfg.max    # 2**53: still exact as a float64
    return np.clip(np.asarray(draws, dtype=np.float64), max(cfg.min, 1), upper).astype(np.int64)
