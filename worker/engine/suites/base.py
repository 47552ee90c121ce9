"""The suite interface.

Lifecycle of one suite in one audit::

    partial = suite.run(ctx, shard, params)      # once per shard, possibly on many workers
    partial = suite.merge(partial_a, partial_b)  # exact: sums, counts and per-sample lists
    result  = suite.finalize(ctx, partial, params)  # metrics computed once, from the merge

A partial is plain JSON data (numbers, lists, dicts) so that it can travel between
workers; it never holds means of means.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..classifier import Classifier
from ..datasets.roots import DataRoots
from ..errors import AuditCancelled
from ..params import ParamSchema
from ..samples import SampleSet

Partial = dict[str, Any]
ProgressFn = Callable[[str, float], None]


class SuiteStatus(str, Enum):
    COMPLETED = "completed"
    SKIPPED = "skipped"


@dataclass
class Warning_:
    """A structured warning for the report (sanity checks, skipped parts, departures)."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


@dataclass
class SuiteResult:
    """What a suite contributes to the report."""

    metrics: dict[str, Any]
    status: SuiteStatus = SuiteStatus.COMPLETED
    artifacts: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class ArtifactStore:
    """Files an audit writes under ``root`` (``<out>/artifacts``); paths are reported relative
    to the audit's output directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, suite: str, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"artifact names are plain file names, got {name!r}")
        p = self.root / suite / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def relative(self, path: Path) -> str:
        return str(Path("artifacts") / Path(path).relative_to(self.root))


@dataclass
class SuiteContext:
    """What a suite may use besides its samples and parameters.

    Args:
        classifier: the wrapped model.
        artifacts: where files go.
        seed: the audit's seed; suites derive their own generators from it.
        shared: results other suites published for reuse, e.g. ``shared["clean"]`` maps a
            sample id to its clean prediction record.
        on_progress: called with (suite, fraction done).
        should_stop: polled at batch boundaries; True cancels the audit.
        roots: the data roots a suite that reads a dataset of its own must stay in (the shift
            suite's second dataset); None: :meth:`DataRoots.from_env`, as for the audit's dataset.
        shard, shards: which shard of the suite this context runs (the runner sets them), so that
            a suite can split work of its own the same way (the shift suite's second dataset).
    """

    classifier: Classifier
    artifacts: ArtifactStore
    seed: int = 0
    shared: dict[str, Any] = field(default_factory=dict)
    on_progress: ProgressFn | None = None
    should_stop: Callable[[], bool] | None = None
    suite: str = ""
    roots: DataRoots | None = None
    shard: int = 0
    shards: int = 1

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    def progress(self, fraction: float) -> None:
        """Report progress of the current suite and stop here if the audit was cancelled."""
        if self.should_stop is not None and self.should_stop():
            raise AuditCancelled("the audit was cancelled")
        if self.on_progress is not None:
            self.on_progress(self.suite, max(0.0, min(1.0, fraction)))

    def generator(self, salt: int = 0) -> torch.Generator:
        """A seeded CPU generator, distinct per suite and salt, so results are reproducible."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + sum(map(ord, self.suite)) * 7919 + salt) % (2**63))
        return g


class Suite(ABC):
    """One audit suite. Subclasses set ``name``, ``params`` and ``description``."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[ParamSchema]
    #: suites whose shared results this one reads; the runner runs them first.
    requires: ClassVar[tuple[str, ...]] = ("clean",)
    #: parameters small enough for `make demo` on two CPU cores (a few seconds to a minute).
    demo_params: ClassVar[dict[str, Any]] = {}
    #: metric paths (fnmatch patterns) a person sees first in a summary.
    headline: ClassVar[tuple[str, ...]] = ()
    #: parameters that hold a dataset reference of their own (validated to its object form, or null);
    #: the service confines their paths to the data roots like the audit's dataset
    dataset_params: ClassVar[tuple[str, ...]] = ()

    def validate_params(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validated parameters with defaults; raise SpecError. Override to add cross-field checks."""
        return self.params.validate(raw, prefix=f"{self.name}.")

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """Checks that need the loaded model and samples (e.g. a work budget); raise SpecError.

        Called once the inputs are resolved, before any suite runs, and again by
        :func:`~worker.engine.runner.run_suite` before the first shard.
        """
        return None

    @abstractmethod
    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        """Every gate-able metric path (relative to the suite) these params produce."""

    @abstractmethod
    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        """Process one shard of samples; return JSON-able partial state."""

    @abstractmethod
    def merge(self, a: Partial, b: Partial) -> Partial:
        """Combine two partials exactly."""

    @abstractmethod
    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        """Metrics from the merged partial; publish shared results in ``ctx.shared``."""
