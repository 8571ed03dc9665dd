"""GPU datasheet presets: memory, HBM bandwidth, dense tensor FLOP/s, host and GPU links, price.

Numbers are vendor datasheet peaks (dense, no sparsity).  `memory_gib` is what the CUDA driver
reports as total memory (what vLLM multiplies by `gpu_memory_utilization`), a little under the
marketing figure: an "80 GB" H100 reports 79.1 GiB.  Link bandwidths are per direction.  Prices
are typical 2025 on-demand cloud list prices per GPU-hour in USD; a scenario should override
`price_per_hour_usd` with what the user actually pays.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sim.schema import Ctx, coerce, positive


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    name: str
    memory_gib: float                   # total device memory as torch.cuda reports it
    hbm_bandwidth_bytes_per_s: float
    bf16_flops: float                   # dense bf16 tensor-core FLOP/s
    fp8_flops: float                    # dense fp8 FLOP/s (0: not supported)
    host_link_bytes_per_s: float        # PCIe per direction, achievable
    interconnect_bytes_per_s: float     # GPU-GPU (NVLink, else PCIe) per direction, for all-reduce
    price_per_hour_usd: float

    def validate(self, ctx: Ctx) -> None:
        for f in fields(self):
            if f.name not in ("name", "fp8_flops"):
                positive(ctx, f.name, getattr(self, f.name))


PRESETS: dict[str, HardwareSpec] = {h.name: h for h in (
    HardwareSpec("A100-40GB", 39.39, 1.555e12, 312e12, 0.0, 25e9, 300e9, 1.9),
    HardwareSpec("A100-80GB", 79.15, 2.039e12, 312e12, 0.0, 25e9, 300e9, 2.5),
    HardwareSpec("H100-SXM", 79.19, 3.35e12, 989e12, 1979e12, 50e9, 450e9, 3.5),
    HardwareSpec("H200", 139.8, 4.8e12, 989e12, 1979e12, 50e9, 450e9, 4.5),
    HardwareSpec("L40S", 44.39, 0.864e12, 362e12, 733e12, 25e9, 25e9, 1.5),
    HardwareSpec("RTX-4090", 23.5, 1.008e12, 165e12, 330e12, 25e9, 25e9, 0.7),
)}
ALIASES = {"a100": "A100-80GB", "a100-80g": "A100-80GB", "a100-40g": "A100-40GB", "h100": "H100-SXM",
           "h100-sxm5": "H100-SXM", "h100-sxm5-80gb": "H100-SXM", "h100-80gb": "H100-SXM", "h200-sxm": "H200",
           "h200-141gb": "H200", "l40s-48gb": "L40S", "4090": "RTX-4090", "rtx4090": "RTX-4090"}


def find_preset(name: str) -> HardwareSpec | None:
    low = name.lower()
    for key, spec in PRESETS.items():
        if key.lower() == low:
            return spec
    alias = ALIASES.get(low)
    return PRESETS[alias] if alias else None


def load_hardware(ref: Any, overrides: dict[str, Any], ctx: Ctx) -> HardwareSpec:
    """A preset (by name) with field overrides, or a full mapping; one-line errors."""
    if isinstance(ref, dict):
        from sim.schema import build
        return build(HardwareSpec, ref, ctx)
    spec = find_preset(str(ref))
    if spec is None:
        raise ctx.at("gpu").error(f"unknown GPU; expected one of {', '.join(PRESETS)}", ref)
    names = {f.name: f for f in fields(HardwareSpec)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names or key == "name":
            raise ctx.at(f"overrides.{key}").error(f"unknown hardware field; expected one of {', '.join(n for n in names if n != 'name')}")
        changes[key] = coerce(float, value, ctx.at(f"overrides.{key}"))
    out = replace(spec, **changes)
    out.validate(ctx.at("overrides"))
    return out
