"""Validation against vLLM itself: run vLLM 0.32's v1 scheduler on a step clock (no model) and
compare its step-by-step decisions with pagesim's.

- `step_trace`  the JSON-lines record both sides write (`StepRecord`, `read_trace`, `write_trace`)
- `vllm_env`    finds vLLM's interpreter and runs the driver in it (`run_vllm_scheduler`, `run_vllm_schedulers`)
- `vllm_driver` the script that runs inside vLLM's venv (stdlib + vllm only)
- `compare`     first divergence, side-by-side table, summary (`compare_traces`)
"""

from .step_trace import StepRecord, TraceHeader, arrival_step, read_trace, write_trace
from .vllm_env import VllmUnavailable, find_vllm, job_from_table, run_vllm_scheduler, run_vllm_schedulers

__all__ = [
    "StepRecord", "TraceHeader", "VllmUnavailable", "arrival_step", "find_vllm", "job_from_table",
    "read_trace", "run_vllm_scheduler", "run_vllm_schedulers", "write_trace",
]
