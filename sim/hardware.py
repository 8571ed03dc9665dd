"""GPU datasheet presets: memory, HBM bandwidth, dense tensor FLOP/s, host and GPU links, price.

What is modelled and the choices made:
- `memory_gib` is the device's total memory as the CUDA driver reports it
  (`torch.cuda.mem_get_info()[1]`, what vLLM multiplies by `gpu_memory_utilization`), a little
  under the marketing figure because the driver keeps some back: an "80 GB" H100 SXM reports
  79.19 GiB, an A100-80GB 79.15 GiB, an A100-40GB 39.39 GiB (the totals PyTorch prints in its
  out-of-memory messages on those cards).
- FLOP/s are vendor datasheet peaks for dense tensor-core math (no 2:4 sparsity) with fp32
  accumulation; `fp8_flops` is 0 on cards without FP8 tensor cores (Ampere).
- Bandwidths are bytes per second per direction.  `host_link_bytes_per_s` is what a PCIe x16
  link achieves in practice (gen4 ~25 GB/s, gen5 ~50 GB/s of 32 / 64 GB/s raw);
  `interconnect_bytes_per_s` is one GPU's NVLink bandwidth per direction (A100: 600 GB/s
  bidirectional -> 300; H100/H200: 900 -> 450), or the PCIe link for cards without NVLink.
- `price_per_hour_usd` is a typical 2025 on-demand list price per GPU-hour in USD, between the
  GPU clouds' lists (Lambda, RunPod: H100 ~$2.7-3.0) and the hyperscalers' (more than twice
  that); not a quote.  It is a placeholder for comparisons: a scenario should override it with
  what the user actually pays (`hardware.overrides.price_per_hour_usd`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sim.schema import Ctx, build, coerce, positive

GB = 1e9
TFLOPS = 1e12


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One GPU.  Every number is per GPU; a TP group of n GPUs has n of each."""

    name: str
    memory_gib: float                   # total device memory as the CUDA driver / torch reports it
    hbm_bandwidth_bytes_per_s: float    # datasheet peak
    bf16_flops: float                   # dense bf16 tensor-core FLOP/s
    fp8_flops: float                    # dense fp8 FLOP/s (0: not supported)
    host_link_bytes_per_s: float        # PCIe per direction, achievable (KV swap, offload)
    interconnect_bytes_per_s: float     # GPU-GPU per direction (NVLink, else PCIe), for all-reduce
    price_per_hour_usd: float           # per GPU, typical 2025 on-demand; override with your own

    def validate(self, ctx: Ctx) -> None:
        for f in fields(self):
            if f.name == "name":
                continue
            positive(ctx, f.name, getattr(self, f.name), allow_zero=f.name in ("fp8_flops", "price_per_hour_usd"))

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * (1 << 30))


PRESETS: dict[str, HardwareSpec] = {h.name: h for h in (
    # A100 SXM4 datasheet: 1,555 / 2,039 GB/s HBM2(e), 312 TFLOPS bf16, NVLink 3 600 GB/s, PCIe gen4
    HardwareSpec("A100-40GB", 39.39, 1555 * GB, 312 * TFLOPS, 0.0, 25 * GB, 300 * GB, 1.90),
    HardwareSpec("A100-80GB", 79.15, 2039 * GB, 312 * TFLOPS, 0.0, 25 * GB, 300 * GB, 2.50),
    # H100 SXM5 datasheet: 3.35 TB/s HBM3, 989 / 1,979 TFLOPS bf16 / fp8, NVLink 4 900 GB/s, PCIe gen5
    HardwareSpec("H100-SXM", 79.19, 3350 * GB, 989 * TFLOPS, 1979 * TFLOPS, 50 * GB, 450 * GB, 3.50),
    # H200 SXM datasheet: 141 GB HBM3e at 4.8 TB/s, H100's compute and links
    HardwareSpec("H200", 139.81, 4800 * GB, 989 * TFLOPS, 1979 * TFLOPS, 50 * GB, 450 * GB, 4.50),
    # L40S datasheet: 48 GB GDDR6 (ECC on) at 864 GB/s, 362 / 733 TFLOPS bf16 / fp8, PCIe gen4, no NVLink
    HardwareSpec("L40S", 44.39, 864 * GB, 362 * TFLOPS, 733 * TFLOPS, 25 * GB, 25 * GB, 1.50),
    # RTX 4090 (Ada whitepaper, fp32 accumulate): 24 GB at 1,008 GB/s, 165 / 330 TFLOPS, PCIe gen4, no NVLink
    HardwareSpec("RTX-4090", 23.64, 1008 * GB, 165 * TFLOPS, 330 * TFLOPS, 25 * GB, 25 * GB, 0.70),
)}
ALIASES = {
    "a100": "A100-80GB", "a100-80g": "A100-80GB", "a100-sxm-80gb": "A100-80GB", "a100-sxm4-80gb": "A100-80GB",
    "a100-40g": "A100-40GB", "a100-sxm4-40gb": "A100-40GB",
    "h100": "H100-SXM", "h100-sxm5": "H100-SXM", "h100-sxm5-80gb": "H100-SXM", "h100-80gb": "H100-SXM",
    "h100-80gb-hbm3": "H100-SXM", "h200-sxm": "H200", "h200-141gb": "H200", "l40s-48gb": "L40S",
    "4090": "RTX-4090", "rtx4090": "RTX-4090", "geforce-rtx-4090": "RTX-4090",
}


def _key(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").replace("nvidia", " ").split())


def find_preset(name: str) -> HardwareSpec | None:
    """A preset by name or alias, ignoring case, spaces, underscores and an "NVIDIA" prefix."""
    key = _key(name)
    for preset, spec in PRESETS.items():
        if preset.lower() == key:
            return spec
    alias = ALIASES.get(key)
    return PRESETS[alias] if alias else None


def load_hardware(ref: Any, overrides: dict[str, Any], ctx: Ctx) -> HardwareSpec:
    """A preset (by name) with field overrides, or a full mapping; one-line errors.

    `ctx` points at the scenario's `hardware` section: errors name `hardware.gpu` or
    `hardware.overrides.FIELD`.
    """
    if isinstance(ref, dict):
        spec = build(HardwareSpec, ref, ctx.at("gpu"))
    else:
        found = find_preset(str(ref))
        if found is None:
            raise ctx.at("gpu").error(f"unknown GPU; expected one of {', '.join(PRESETS)}", ref)
        spec = found
    names = [f.name for f in fields(HardwareSpec) if f.name != "name"]
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ctx.at(f"overrides.{key}").error(f"unknown hardware field; expected one of {', '.join(names)}")
        changes[key] = coerce(float, value, ctx.at(f"overrides.{key}"))
    out = replace(spec, **changes)
    out.validate(ctx.at("overrides"))
    return out
