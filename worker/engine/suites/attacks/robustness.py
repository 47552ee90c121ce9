"""Part 2a: untargeted robustness per norm and budget, worst case over the attack set, and
the minimal perturbation per sample (FMN)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ...attacks import Attack, AttackResult, make_attack
from ...attacks.eot import EoT
from ...classifier import Classifier
from ...metrics import Unit, metric, proportion
from .common import Adversarials, Record, Sample, in_batches, median, seeds_for, share
from .params import attacks_for, budgets, eps_key

UNIT = {"linf": Unit.LINF, "l2": Unit.L2}


def build(name: str, norm: str, params: dict[str, Any], **overrides: Any) -> Attack:
    """The registered attack ``name`` with the request's parameters for it (``attack_params.<name>``)."""
    return make_attack(name, norm=norm, **{**params["attack_params"][name], **overrides})


@dataclass
class Cost:
    """What one attack cost on one norm: samples through the model, calls, seconds. The partial
    holds it as JSON (:meth:`to_json`), so checkpoints store it as they store any partial."""

    forward_samples: int = 0
    backward_samples: int = 0
    seconds: float = 0.0
    calls: int = 0

    def add(self, res: AttackResult, eot: EoT | None, judged: int) -> None:
        """Samples through the model: with EoT every pass the attack counts is k draws, and the
        majority judgement adds m passes per candidate it checks."""
        draws = eot.grad_samples if eot is not None else 1
        self.forward_samples += res.forward_samples * draws + judged * (eot.passes if eot is not None else 0)
        self.backward_samples += res.backward_samples * draws
        self.calls += 1

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.forward_samples + other.forward_samples, self.backward_samples + other.backward_samples,
                    self.seconds + other.seconds, self.calls + other.calls)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cost:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


#: norm -> attack (or "minimal:<method>") -> its cost, as the partial holds it
CostTable = dict[str, dict[str, dict[str, Any]]]


def merge_costs(a: CostTable, b: CostTable) -> CostTable:
    """Costs of two shards: sums per norm and attack (exact for the counts)."""
    out = {n: dict(per) for n, per in a.items()}
    for norm, per in b.items():
        mine = out.setdefault(norm, {})
        for name, c in per.items():
            mine[name] = (Cost.from_json(mine[name]) + Cost.from_json(c) if name in mine
                          else Cost.from_json(c)).to_json()
    return out


def run_untargeted(clf: Classifier, x: torch.Tensor, y: torch.Tensor, ids: list[str], attacked: torch.Tensor,
                   params: dict[str, Any], seed: int, progress: Callable[[float], None], eot: EoT | None = None,
                   label_sets: Mapping[str, frozenset[int]] | None = None,
                   keep: Adversarials | None = None) -> tuple[dict[str, Record], CostTable]:
    """Per sample and norm: success per attack and budget, worst-case adversarial class per budget,
    and the minimal perturbation; and the cost per norm and attack. Samples not attacked (clean
    mistakes) get ``None`` entries.

    With ``cascade`` each attack runs only at the budgets where a sample is still robust after
    the attacks before it (``None`` where it did not run). A sample's robust budgets are always
    the smallest ones (what falls in a small ball falls in every larger one), so the samples are
    grouped by how many of the sorted budgets they still hold, one attack call per group.
    With ``eot`` the attacks see the model through :class:`EoT` and every success is judged again
    by a majority of passes.

    With ``label_sets`` (sample id -> its valid classes: multi-label success) a sample stays in the
    cascade at a budget while every adversarial found there is of a valid class, so the later
    attacks get their chance to leave the set; and each record keeps every attack's class per
    budget under ``"preds"``.
    With ``keep``, each success of the robust-accuracy set that leaves the label set is offered to
    it (it keeps one adversarial per sample and norm).
    """
    out: dict[str, Record] = {sid: {} for sid in ids}
    idx = attacked.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    norms = params["norms"]
    model = eot if eot is not None else clf
    cost: dict[str, dict[str, Cost]] = {n: {} for n in norms}
    # (norm, attack, whether it is one of the robust-accuracy set or the minimal-norm method)
    jobs = [(n, a, True) for n in norms for a in attacks_for(params, n)]
    if params["minimal"] != "none":
        jobs += [(n, params["minimal"], False) for n in norms]
    total = max(1, len(jobs))
    for sid in ids:
        for n in norms:
            out[sid][n] = {"success": {}, "adv_class": None, "minimal": None}
    # per norm: budgets (original order) x attacked samples, still robust after the attacks so far
    robust = {n: torch.ones(len(budgets(params, n)), len(sids), dtype=torch.bool) for n in norms}
    for j, (norm, name, in_set) in enumerate(jobs):
        attack = build(name, norm, params)
        eps = budgets(params, norm)
        order = sorted(range(len(eps)), key=lambda i: eps[i])
        groups: list[tuple[list[int], torch.Tensor]] = []
        if not in_set:  # the minimum-norm method alone: every sample, no budget
            groups.append(([], torch.arange(len(sids))))
        elif params["cascade"]:
            held = robust[norm][order].int().cumprod(dim=0).sum(dim=0)  # leading robust budgets
            for k in sorted(set(held.tolist()) - {0}):
                groups.append((order[:k], (held == k).nonzero().squeeze(1)))
        else:
            groups.append((list(range(len(eps))), torch.arange(len(sids))))
        spent = cost[norm].setdefault(name if in_set else f"minimal:{name}", Cost())
        t0 = time.perf_counter()
        for cols, members in groups:
            gx, gy = xs[members.to(xs.device)], ys[members.to(ys.device)]
            gids = [sids[int(m)] for m in members]
            geps = [eps[c] for c in cols]

            def chunk(start: int, stop: int, attack: Attack = attack, geps: list[float] = geps, name: str = name,
                      norm: str = norm, gx: torch.Tensor = gx, gy: torch.Tensor = gy, gids: list[str] = gids,
                      spent: Cost = spent) -> tuple[AttackResult, torch.Tensor, torch.Tensor]:
                res = attack(model, gx[start:stop], gy[start:stop], geps,
                             rng=seeds_for(seed, gids[start:stop], f"{norm}:{name}"))
                success, preds = res.success, res.predictions
                judged = 0
                if eot is not None and geps:
                    success, preds = success.clone(), preds.clone()
                    for b in range(len(geps)):
                        hit = success[b].nonzero().squeeze(1)
                        if hit.numel():
                            ok, pred = eot.judge(res.adversarials[b][hit], gy[start:stop][hit])
                            success[b, hit], preds[b, hit] = ok, pred
                            judged += int(hit.numel())
                    # majorities are random: keep "fooled inside a small ball, fooled in every larger one"
                    srt = sorted(range(len(geps)), key=lambda i: geps[i])
                    for small, large in zip(srt, srt[1:]):
                        carry = success[small] & ~success[large]
                        success[large] |= carry
                        preds[large] = torch.where(carry, preds[small], preds[large])
                spent.add(res, eot, judged)
                return res, success, preds

            pos = 0
            for res, success, preds in in_batches(clf, len(gids), params["batch_size"], chunk):
                for k in range(success.shape[1]):
                    m = int(members[pos + k])
                    rec = out[gids[pos + k]][norm]
                    if in_set:
                        row: list[bool | None] = [None] * len(eps)
                        cls: list[int | None] = [None] * len(eps)
                        valid = label_sets[gids[pos + k]] if label_sets is not None else frozenset()
                        for b, c in enumerate(cols):
                            row[c], cls[c] = bool(success[b, k]), int(preds[b, k])
                            if row[c] and cls[c] not in valid:
                                robust[norm][c, m] = False
                                if keep is not None:
                                    keep.offer(gids[pos + k], norm, eps[c], name, res.adversarials[b][k])
                        rec["success"][name] = row
                        rec.setdefault("pred", {})[name] = cls
                    if not in_set and res.minimal_norms is not None:
                        v = float(res.minimal_norms[k])
                        rec["minimal"] = v if math.isfinite(v) else None
                        rec["minimal_found"] = math.isfinite(v)
                pos += success.shape[1]
        spent.seconds += time.perf_counter() - t0
        progress((j + 1) / total)
    for sid in sids:
        for norm in norms:
            rec = out[sid][norm]
            names = attacks_for(params, norm)
            n_eps = len(budgets(params, norm))
            for a in names:  # a sample no group held (fallen everywhere before this attack)
                rec["success"].setdefault(a, [None] * n_eps)
                rec.setdefault("pred", {}).setdefault(a, [None] * n_eps)
            classes: list[int | None] = []
            for b in range(n_eps):
                first = next((a for a in names if rec["success"][a][b]), None)
                classes.append(rec["pred"][first][b] if first is not None else None)
            rec["adv_class"] = classes
            pred = rec.pop("pred", None)
            if label_sets is not None:
                rec["preds"] = pred
    for i in (~attacked).nonzero().squeeze(1).tolist():
        for norm in norms:
            out[ids[i]][norm] = {"success": None, "adv_class": None, "minimal": 0.0, "minimal_found": True}
    return out, {n: {name: c.to_json() for name, c in per.items()} for n, per in cost.items()}


def robust_flags(rec: Sample, norm: str, n_eps: int, names: list[str]) -> list[bool]:
    """Per budget: robust against every attack (worst case); clean mistakes are never robust."""
    r = rec.attacks[norm]
    if r["success"] is None:
        return [False] * n_eps
    return [not any(r["success"][a][b] for a in names) for b in range(n_eps)]


def robustness_metrics(records: list[Sample], params: dict[str, Any], class_names: list[str]
                       ) -> dict[str, Any]:
    """robust_accuracy.{norm}.{eps}, per_attack.{norm}.{attack}.{eps}, minimal_perturbation.{norm}.*"""
    n = len(records)
    robust: dict[str, Any] = {}
    per_attack: dict[str, Any] = {}
    minimal: dict[str, Any] = {}
    for norm in params["norms"]:
        eps = budgets(params, norm)
        names = attacks_for(params, norm)
        flags = [robust_flags(r, norm, len(eps), names) for r in records]
        robust[norm] = {eps_key(e): proportion(share([f[b] for f in flags]), n,
                                           f"robust accuracy under {norm} eps={e:g}: share of samples correctly "
                                           f"classified and not fooled by any of {names}", eps=e, attacks=names)
                        for b, e in enumerate(eps)}
        per_attack[norm] = {}
        for i, a in enumerate(names):
            # cascade: robust after the attacks up to this one (the later ones saw only survivors);
            # otherwise: robust against this attack alone
            upto = names[:i + 1] if params["cascade"] else [a]
            what = (f"robust accuracy after {upto} in turn" if params["cascade"]
                    else f"robust accuracy against {a} alone")
            per_attack[norm][a] = {}
            for b, e in enumerate(eps):
                hits = [r.attacks[norm]["success"] is not None
                        and not any(r.attacks[norm]["success"][u][b] for u in upto) for r in records]
                per_attack[norm][a][eps_key(e)] = proportion(share(hits), n, f"{what}, {norm} eps={e:g}",
                                                         eps=e, attack=a, cumulative=bool(params["cascade"]))
        if params["minimal"] != "none":
            minimal[norm] = minimal_metrics(records, norm, params["minimal"], class_names)
    out = {"robust_accuracy": robust, "per_attack": per_attack}
    if minimal:
        out["minimal_perturbation"] = minimal
    return out


def minimal_norms(records: list[Sample], norm: str) -> list[float]:
    """Per attacked sample: the verified minimal norm, inf where none was found."""
    vals = []
    for r in records:
        rec = r.attacks[norm]
        if rec["success"] is None:
            continue
        vals.append(rec["minimal"] if rec["minimal"] is not None else math.inf)
    return vals


def minimal_metrics(records: list[Sample], norm: str, method: str, class_names: list[str]) -> dict[str, Any]:
    attacked = [r for r in records if r.attacks[norm]["success"] is not None]
    vals = minimal_norms(records, norm)
    unit = UNIT[norm]
    per_class: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        sub = [r for r in attacked if r.label == c]
        if sub:
            per_class[name] = metric(median(minimal_norms(sub, norm)), unit, len(sub),
                                     f"median minimal {norm} perturbation of class {name!r} ({method}; "
                                     "null when most were not found)")
    return {
        "median": metric(median(vals), unit, len(vals), f"median minimal {norm} perturbation over correctly "
                         f"classified samples ({method}; a sample with none found counts as infinite)",
                         method=method),
        "found": proportion(share([math.isfinite(v) for v in vals]), len(vals),
                        f"share of correctly classified samples for which {method} found an adversarial"),
        "per_class": per_class,
    }
