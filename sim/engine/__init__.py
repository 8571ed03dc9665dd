"""The SimPy model: an arrival process feeding a router, and one process per engine replica.

This package is the only place that yields.  Each replica process reads like vLLM's EngineCore loop:

    sync  (vLLM CPU build, `async_scheduling=False`):  schedule -> execute -> update_from_output
    async (vLLM GPU default, `AsyncScheduler` + a batch queue of depth 2):
          schedule(k+1) while step k executes -> wait for step k -> update_from_output(k)

so in async mode a request arriving during step k is first seen when step k+2 is scheduled, and
blocks freed by step k's finished requests are first reusable by step k+2.  There are no
per-token events: one SimPy timeout per engine step (plus one per arrival), fewer where quiet
stretches or steps run ahead of the clock take several steps at once.

    run.py            simulate(): wires the processes, runs to the end
    arrivals.py       the arrival process, session follow-ups, handing a request to a replica
    replica_loop.py   one replica's engine loop (sync and async), quiet stretches, the sync run-ahead
    pipeline_loop.py  pipeline parallelism: vLLM's batch queue over the stages
    apply.py          applying a step's output and recording it
    disagg.py         P/D disaggregation at run time: prefill pool, KV transfer, decode leg
"""

from sim.engine.run import simulate

__all__ = ["simulate"]
