"""Every metric path the docs, the README, the OpenAPI document and the engine's docstrings show as
an example is one that ``robustaudit metrics`` lists (issue 18: ``help(audit)`` showed
``attacks.linf.eps_0.03.robust_accuracy``, which every audit refuses).

A candidate is ``SUITE.segment...`` for a registered suite, not inside a file or module path. It
passes when it names a metric (or a subtree of metrics) of the catalogue at the suites' default or
demo parameters, a bound of a leaf's interval (``.ci95_low``), or a suite parameter
(``attacks.targeted.eps``, for ``--set``). Budget-like keys (``eps_0p1``, ``f_0p17``) may name any
budget written by the one key rule; CAPITALS, ``{class}`` and ``*`` are placeholders, and
``{linf,l2}`` lists alternatives.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.engine.metrics import INTERVAL_BOUNDS
from worker.engine.spec import metric_catalog, validate_suites
from worker.engine.suites import SUITES

ROOT = Path(__file__).resolve().parents[1]
#: deliberate counter-examples: the flat parameter names of earlier versions, shown as refused
ALLOWED = {"attacks.targeted_eps"}
#: keys of a suite's report entry beside its metrics (``attacks.metadata.targeted`` is no metric)
ENTRY_KEYS = {"metadata", "warnings", "artifacts", "unreliable", "status", "seconds", "params"}
SEGMENT = r"(?:\{[^{}\s]*\}|[\w*])+"
SUITE_NAMES = "|".join(map(re.escape, SUITES))
CANDIDATE = re.compile(rf"(?<![\w./\-])(?:{SUITE_NAMES})\.{SEGMENT}(?:\.{SEGMENT})*")
#: a number in a metric key (``eps_0p03137``, ``rot_m30``), by the one key rule (suites/keys.py)
NUMBER = re.compile(r"(?<=_)m?\d+(?:p\d+)?(?=_|$)")


def sources() -> Iterator[tuple[str, str]]:
    """(where, text) of every doc page, the README, the OpenAPI document and every engine docstring."""
    pages = [ROOT / "README.md", ROOT / "api_spec" / "openapi.yaml", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        yield str(page.relative_to(ROOT)), page.read_text()
    for module in sorted((ROOT / "worker" / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield f"{module.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}", doc


def candidates() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for where, text in sources():
        for match in CANDIDATE.finditer(text):
            path = match.group(0)
            last = path.rsplit(".", 1)[-1]
            if last in {"md", "py", "png", "json", "npz", "html", "yaml", "pt", "pt2"}:
                continue  # a file name
            if any(re.match(r"[A-Z][a-z]", seg) for seg in path.split(".")):
                continue  # a Python name (attacks.common.Sample)
            found.setdefault(path, []).append(where)
    return found


def _catalogue() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for params in ({n: {} for n in SUITES}, {n: dict(SUITES[n].demo_params) for n in SUITES}):
        for name, paths in metric_catalog(validate_suites(params)).items():
            out.setdefault(name, set()).update(paths)
    return out


CATALOGUE = _catalogue()


def _placeholder(seg: str) -> bool:
    return seg == "*" or (seg.startswith("{") and seg.endswith("}") and "," not in seg) or (
        any(c.isupper() for c in seg) and seg.upper() == seg)


def _same(example: str, pattern: str) -> bool:
    """One segment: a placeholder on either side, equal, or budget-like keys of the same shape."""
    if _placeholder(example) or (pattern.startswith("{") and pattern.endswith("}")):
        return True
    shape = NUMBER.sub("#", pattern)
    return example == pattern or (shape != pattern and NUMBER.sub("#", example) == shape)


def names_metrics(suite: str, segs: list[str]) -> bool:
    """A leaf, a subtree, or a leaf's interval bound of the suite's catalogue."""
    if segs and segs[-1] in INTERVAL_BOUNDS and names_metrics(suite, segs[:-1]):
        return True
    for pattern in CATALOGUE.get(suite, ()):
        pat = pattern.split(".")
        if segs[-1] == "*":  # the rest of the path
            if len(pat) >= len(segs) and all(_same(e, p) for e, p in zip(segs[:-1], pat)):
                return True
        elif len(pat) >= len(segs) and all(_same(e, p) for e, p in zip(segs, pat)):
            return True
    return False


def names_parameter(suite: str, segs: list[str]) -> bool:
    """A parameter of the suite (``attacks.targeted.eps``, ``attacks.attack_params.pgd.steps``)."""
    fields: list[dict[str, Any]] = SUITES[suite].params.describe()
    for i, seg in enumerate(segs):
        field = next((f for f in fields if f["name"] == seg), None)
        if field is None:
            return False
        fields = field.get("fields") or []
        if not fields and i < len(segs) - 1:
            return False
    return True


def expand(path: str) -> list[list[str]]:
    """``attacks.{linf,l2}.x`` -> the paths for each alternative, as segments."""
    segs = path.split(".")
    options = [s[1:-1].split(",") if s.startswith("{") and "," in s else [s] for s in segs]
    return [list(combo) for combo in itertools.product(*options)]


def accepted(path: str) -> bool:
    if path in ALLOWED:
        return True
    for segs in expand(path):
        suite, rest = segs[0], segs[1:]
        if not (rest[0] in ENTRY_KEYS or names_metrics(suite, rest) or names_parameter(suite, rest)):
            return False
    return True


FOUND = candidates()


def test_the_docs_show_metric_paths_at_all():
    """The extraction finds what the docs do show, so an empty result cannot pass for clean docs."""
    assert {"clean.top1", "attacks.robust_accuracy.linf.eps_0p03137.ci95_low"} <= set(FOUND)
    assert any(where.startswith("worker/engine/") for places in FOUND.values() for where in places)


@pytest.mark.parametrize("path", sorted(FOUND))
def test_every_example_is_a_listed_metric_or_a_parameter(path):
    assert accepted(path), f"{path} (in {', '.join(sorted(set(FOUND[path]))[:3])}) is no metric path that " \
                           "`robustaudit metrics` lists, nor a parameter"


@pytest.mark.parametrize("bad", ["attacks.linf.eps_0.03.robust_accuracy", "attacks.robust_accuracy.linf.eps_0.03",
                                 "clean.top_1", "attacks.targeted.spearmann", "perturbation.corruptions.fog.s9",
                                 "attacks.robust_accuracy.linf.top1"])
def test_the_check_refuses_what_an_audit_refuses(bad):
    assert not accepted(bad)


@pytest.mark.parametrize("good", ["attacks.robust_accuracy.linf.eps_0p1", "attacks.targeted.mimic.cat",
                                  "attacks.{robust_accuracy,per_attack}.linf", "attacks.per_attack.NORM.ATTACK.EPS",
                                  "attacks.targeted.eps", "clean.top1.ci95_low", "perturbation.geometric.scale.*"])
def test_the_check_accepts_budgets_placeholders_and_parameters(good):
    assert accepted(good)
