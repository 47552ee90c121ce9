"""Test-only suite ``slow``: sleeps in small steps, reporting progress each step, so a test can
cancel or kill a worker mid-audit for sure. Workers get it through ``tests.e2e.slow_plugin``."""

from __future__ import annotations

import time
from typing import Any

from worker.engine.metrics import Unit, metric
from worker.engine.params import Param, ParamKind, ParamSchema
from worker.engine.samples import SampleSet
from worker.engine.suites import Suite, SuiteContext, SuiteResult


class SlowSuite(Suite):
    name = "slow"
    description = "test only: waits `seconds`, in steps of 0.1 s"
    params = ParamSchema((Param("seconds", ParamKind.FLOAT, 5.0, "how long to take", minimum=0, maximum=120),))

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        return ["n"]

    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> dict[str, Any]:
        steps = max(1, int(params["seconds"] / 0.1))
        for i in range(steps):
            time.sleep(0.1)
            ctx.progress((i + 1) / steps)
        return {"n": len(samples)}

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {"n": a["n"] + b["n"]}

    def finalize(self, ctx: SuiteContext, partial: dict[str, Any], params: dict[str, Any]) -> SuiteResult:
        return SuiteResult(metrics={"n": metric(partial["n"], Unit.COUNT, partial["n"], "samples waited on")})
