"""3a: run the generator-layer attack over seeds derived from the shard's samples.

A seed is (sample id, k): its latent comes from a generator seeded by the audit seed, the
sample id and k, and its class is the sample's label, so a seed is the same in every shard.
Seeds the model does not classify as their class are dropped (docs/suites/perturbation.md, 3a, step 1).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...generators import GeneratorError, LoadedGenerator, load_generator
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..base import SuiteContext, Warning_
from ..keys import colliding, metric_key
from ..parts import Part, PartResult
from .artifacts import example_grid
from .common import Final, Progress, Shard, median
from .corruptions import sample_seed
from .generator_layers import AttackSettings, OutputFit, Spread, attack, fixed_budget, growing_budget, layer_spreads

#: growing mode may take at most this many steps (max_eps / eps_growth).
MAX_GROWING_STEPS = 5000
#: each shard keeps its first examples (<= 32) per layer; the 32 smallest seed keys of the union
#: then contain the final choice whatever the sharding
MERGED_EXAMPLES = 32

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the generator-layer perturbations (skipped with a warning when "
          "no generator is given and the dataset has no bundled one)"),
    Param("generator", ParamKind.STR, None, "generator weights file (safetensors or state dict; CLI only, the "
          "service fills it in from generator_id); default: the bundled demo generator for builtin:digits",
          nullable=True),
    Param("card", ParamKind.JSON, None, "generator card: a path, the card object, or null (the <stem>.card.json "
          "beside the weights; CLI only, the service fills it in from generator_id)", nullable=True),
    Param("generator_id", ParamKind.STR, None, "API: a registered generator's id (uploaded to /v1/models with "
          "kind=generator); the service resolves it", nullable=True),
    Param("layers", ParamKind.STR_LIST, None, "layers to perturb (default: all in the card, coarse -> fine)",
          nullable=True),
    Param("seeds_per_sample", ParamKind.INT, 1, "latents drawn per sampled image (its class is the seed's class)",
          minimum=1, maximum=16),
    Param("sample_fraction", ParamKind.FLOAT, 1.0, "share of the sampled images that get seeds (chosen by a hash "
          "of the sample id, so every shard agrees)", minimum=0.001, maximum=1.0),
    Param("modes", ParamKind.CHOICE_LIST, ["fixed", "growing"], "fixed: success rate per eps; growing: eps "
          "grown each step until success", choices=("fixed", "growing"), max_items=2),
    Param("eps", ParamKind.FLOAT_LIST, [2.0, 4.0, 8.0, 16.0], "fixed-mode L2 budgets on p (in units of the "
          "per-unit spread)", minimum=1e-6, maximum=1e6, max_items=16),
    Param("steps", ParamKind.INT, 50, "Adam steps per fixed budget", minimum=1, maximum=2000),
    Param("lr", ParamKind.FLOAT, 0.1, "Adam learning rate on p", minimum=1e-6, maximum=100.0),
    Param("kappa", ParamKind.FLOAT, 0.0, "margin asked for beyond the decision boundary", minimum=0.0,
          maximum=1000.0),
    Param("eps_growth", ParamKind.FLOAT, 0.5, "growing mode: budget increase per step", minimum=1e-6,
          maximum=1e6),
    Param("max_eps", ParamKind.FLOAT, 32.0, "growing mode: largest budget", minimum=1e-6, maximum=1e6),
    Param("spread", ParamKind.CHOICE, Spread.STD.value, "per-unit scale of the perturbation: standard deviation "
          "or max - min over the reference batch", enum=Spread),
    Param("reference_batch", ParamKind.INT, 256, "latents in the spread estimate", minimum=2, maximum=4096),
    Param("resize_output", ParamKind.BOOL, False, "resize generator images to the model's input size when "
          "they differ (otherwise that is an error)"),
    Param("examples", ParamKind.INT, 6, "example pairs per layer in the PNG grid", minimum=0, maximum=32),
))

DEMO_GENERATOR = Path(__file__).resolve().parents[2] / "assets" / "demo" / "digits_generator.safetensors"
CHUNK = 64
THUMBNAIL = 64
SPREAD_SALT = 31
ASSUMED_LAYERS = 4  # for the progress estimate before the card is read


def layer_key(name: str) -> str:
    """A layer name as one metric-path segment (dots would split it)."""
    return name.replace(".", "_")


def generator_source(samples: SampleSet, params: dict[str, Any]) -> tuple[str | None, str | None]:
    """(weights, card) to use, or (None, reason) when this part has to be skipped."""
    if params["generator"]:
        return params["generator"], None
    ref = samples.reference or {}
    if ref.get("kind") == "builtin" and ref.get("name") == "digits":
        return str(DEMO_GENERATOR), None
    return None, "no generator given and the dataset has no bundled one: set generator_layers.generator"


def layer_units(params: dict[str, Any]) -> int:
    """Progress units per layer: one per fixed budget, one for the growing run."""
    return (len(params["eps"]) if "fixed" in params["modes"] else 0) + (1 if "growing" in params["modes"] else 0)


def units(params: dict[str, Any]) -> int:
    """Progress units of this part (four layers assumed when the card decides)."""
    return layer_units(params) * len(params["layers"] or range(ASSUMED_LAYERS)) if params["enabled"] else 0


def selected(sid: str, fraction: float) -> bool:
    return fraction >= 1.0 or zlib.crc32(sid.encode()) / 2**32 < fraction


def class_map(gen: LoadedGenerator, model_names: list[str]) -> dict[int, int]:
    """Model label -> generator class, matched by class name."""
    index = {n: i for i, n in enumerate(gen.card.class_names)}
    mapping = {label_: index[n] for label_, n in enumerate(model_names) if n in index}
    if not mapping:
        raise GeneratorError(f"none of the generator's classes {list(gen.card.class_names)[:10]} is a class of the "
                             f"model {model_names[:10]}: the class names must match")
    return mapping


def run(inp: Shard) -> dict[str, Any]:
    """Per seed outcomes and a few example images per layer."""
    ctx, samples, params, cache = inp.ctx, inp.samples, inp.params["generator_layers"], inp.generators
    progress = Progress(inp.progress, units(params))
    path, reason = generator_source(samples, params)
    if path is None:
        return {"skipped": reason, "seeds": {}, "examples": {}}
    clf = ctx.classifier
    key = f"{path}|{params['card']}|{clf.device}"
    if key not in cache:
        cache[key] = load_generator(path, params["card"], device=clf.device)
    gen = cache[key]
    layers = params["layers"] or list(gen.card.layers)
    unknown = [name for name in layers if name not in gen.card.layers]
    if unknown:
        raise GeneratorError(f"unknown generator layer(s) {unknown}; the card lists {list(gen.card.layers)}")
    fit = OutputFit(gen.card.output_size, clf.card, resize=params["resize_output"])
    seeds, z, y_gen, y_model = draw_seeds(ctx, samples, params, gen, fit)
    result: dict[str, Any] = {"skipped": None, "generator": gen.describe(), "layers": layers, "seeds": seeds,
                              "examples": {}}
    kept = [k for k in sorted(seeds) if seeds[k]["kept"]]
    order = {k: i for i, k in enumerate(sorted(seeds))}
    idx = torch.tensor([order[k] for k in kept], dtype=torch.long)
    settings = AttackSettings(steps=params["steps"], lr=params["lr"], kappa=params["kappa"],
                              eps_growth=params["eps_growth"], max_eps=params["max_eps"])
    spreads = layer_spreads(gen, layers, batch=params["reference_batch"], kind=params["spread"],
                            generator=ctx.generator(SPREAD_SALT))
    for layer in layers:
        fixed_hits: dict[str, list[bool]] = {k: [] for k in kept}
        eps_hits: dict[str, float | None] = {k: None for k in kept}
        best: dict[str, tuple[torch.Tensor, torch.Tensor, int, float]] = {}
        for start in range(0, len(kept), CHUNK):
            ks = kept[start:start + CHUNK]
            sel = idx[start:start + CHUNK]
            zc, yg, ym = z[sel].to(clf.device), y_gen[sel].to(clf.device), y_model[sel].to(clf.device)
            with torch.no_grad():
                clean = fit(gen.model(zc, yg)).cpu()
            if "fixed" in params["modes"]:
                for eps in params["eps"]:
                    r = attack(gen, clf, fit, layer, zc, yg, ym, spreads[layer], fixed_budget(eps),
                               settings.steps, settings)
                    for j, k in enumerate(ks):
                        ok = bool(r.success[j])
                        fixed_hits[k].append(ok)
                        if ok and (k not in best or eps < best[k][3]):
                            best[k] = (clean[j], r.images[j], int(r.preds[j]), float(eps))
            if "growing" in params["modes"]:
                budget, steps = growing_budget(settings)
                r = attack(gen, clf, fit, layer, zc, yg, ym, spreads[layer], budget, steps, settings)
                for j, k in enumerate(ks):
                    if bool(r.success[j]):
                        eps_hits[k] = float(r.eps[j])
                        best[k] = (clean[j], r.images[j], int(r.preds[j]), float(r.eps[j]))
        for k in kept:
            seeds[k]["layers"][layer] = {"fixed": fixed_hits[k], "eps_at_success": eps_hits[k]}
        result["examples"][layer] = [
            {"seed": k, "label": seeds[k]["label"], "pred": best[k][2], "eps": best[k][3],
             "original": thumbnail(best[k][0]), "perturbed": thumbnail(best[k][1])}
            for k in sorted(best)[:params["examples"]]]
        progress.step(layer_units(params))
    return result


def draw_seeds(ctx: SuiteContext, samples: SampleSet, params: dict[str, Any], gen: LoadedGenerator,
               fit: OutputFit) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shard's seeds (sorted by key) with their latents and classes; which ones the model gets right."""
    clf = ctx.classifier
    mapping = class_map(gen, list(clf.card.class_names)) if gen.card.conditional else {}
    seeds: dict[str, Any] = {}
    draws: dict[str, tuple[torch.Tensor, int, int]] = {}
    for sid, lab in zip(samples.ids, samples.labels.tolist()):
        if not selected(sid, params["sample_fraction"]):
            continue
        for index in range(params["seeds_per_sample"]):
            key = f"{sid}#{index}"
            g = torch.Generator().manual_seed(sample_seed(ctx.seed, sid, "latent", index))
            z = gen.sample_latents(1, g)[0].cpu()
            if gen.card.conditional and lab not in mapping:
                seeds[key] = {"sample": sid, "label": lab, "kept": False, "reason": "class not in the generator",
                              "layers": {}}
                continue
            draws[key] = (z, mapping.get(lab, 0), lab)
    keys = sorted(draws)
    if not keys:
        empty = torch.zeros(0, gen.card.latent_dim)
        return seeds, empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    z = torch.stack([draws[k][0] for k in keys])
    y_gen = torch.tensor([draws[k][1] for k in keys], dtype=torch.long)
    y_model = torch.tensor([draws[k][2] for k in keys], dtype=torch.long)
    with torch.no_grad():
        preds = torch.cat([
            clf.logits(fit(gen.model(z[s:s + CHUNK].to(clf.device), y_gen[s:s + CHUNK].to(clf.device))))
            .argmax(1).cpu() for s in range(0, len(keys), CHUNK)])
    if not gen.card.conditional:
        y_model = preds.clone()
    for j, k in enumerate(keys):
        ok = bool(preds[j] == y_model[j])
        seeds[k] = {"sample": k.rsplit("#", 1)[0], "label": int(y_model[j]), "kept": ok,
                    "reason": None if ok else "the model does not classify G(z, y) as y", "layers": {}}
    # Every seed (kept or not) in key order, so indices line up with sorted(seeds).
    all_keys = sorted(seeds)
    pos = {k: i for i, k in enumerate(keys)}
    full_z = torch.zeros(len(all_keys), gen.card.latent_dim)
    full_g = torch.zeros(len(all_keys), dtype=torch.long)
    full_m = torch.zeros(len(all_keys), dtype=torch.long)
    for i, k in enumerate(all_keys):
        if k in pos:
            full_z[i], full_g[i], full_m[i] = z[pos[k]], y_gen[pos[k]], y_model[pos[k]]
    return seeds, full_z, full_g, full_m


def thumbnail(img: torch.Tensor) -> list[list[list[int]]]:
    """A C x H x W image as uint8 lists, at most THUMBNAIL px on its long side (for the PNG grid)."""
    h, w = img.shape[-2:]
    if max(h, w) > THUMBNAIL:
        s = THUMBNAIL / max(h, w)
        img = F.interpolate(img[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    out: list[list[list[int]]] = (img.clamp(0, 1) * 255).round().to(torch.uint8).tolist()
    return out


def merge(a: dict[str, Any], b: dict[str, Any], examples: int) -> dict[str, Any]:
    out = {**a, "seeds": {**a["seeds"], **b["seeds"]}}
    if a.get("skipped") is None and b.get("skipped") is None:
        ex = {}
        for layer in set(a["examples"]) | set(b["examples"]):
            both = a["examples"].get(layer, []) + b["examples"].get(layer, [])
            ex[layer] = sorted(both, key=lambda e: e["seed"])[:examples]
        out["examples"] = ex
    return out


def metrics(part: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    seeds = part["seeds"]
    kept = [s for s in seeds.values() if s["kept"]]
    n = len(kept)
    out: dict[str, Any] = {
        "seeds_drawn": metric(len(seeds), Unit.COUNT, len(seeds), "seeds (latent, class) drawn"),
        "seeds_kept": metric(n, Unit.COUNT, len(seeds),
                             "seeds the model classifies as their class (the ones attacked)"),
    }
    for layer in part["layers"]:
        rows = [s["layers"][layer] for s in kept]
        entry: dict[str, Any] = {}
        if "fixed" in params["modes"]:
            entry["success_rate"] = {
                metric_key("eps", e): proportion(_rate([r["fixed"][j] for r in rows]), n,
                                        f"share of seeds whose class a perturbation of layer {layer!r} with "
                                        f"||p||_2 <= {e:g} (spread units) flips", eps=e, layer=layer)
                for j, e in enumerate(params["eps"])}
        if "growing" in params["modes"]:
            hits = [r["eps_at_success"] for r in rows if r["eps_at_success"] is not None]
            entry["growing_success_rate"] = proportion(_rate([r["eps_at_success"] is not None for r in rows]),
                                                   n, f"share of seeds flipped at layer {layer!r} "
                                                   f"within eps <= {params['max_eps']:g}", layer=layer)
            how = "growing mode: the budget in force at the first success"
        else:
            hits = [min(e for e, ok in zip(params["eps"], r["fixed"]) if ok) for r in rows if any(r["fixed"])]
            how = "fixed mode: the smallest budget in eps that succeeded"
        entry["median_eps"] = metric(median(hits), Unit.L2, len(hits), f"median eps (L2 of p, spread units) at "
                                     f"success at layer {layer!r}, over flipped seeds ({how})", layer=layer)
        out[layer_key(layer)] = entry
    return out


def _rate(values: list[bool]) -> float | None:
    return math.fsum(float(v) for v in values) / len(values) if values else None


def metric_paths(params: Mapping[str, Any]) -> list[str]:
    """Paths below ``generator_layers.``."""
    layers = [layer_key(name) for name in params["layers"]] if params["layers"] else ["{layer}"]
    paths = ["seeds_drawn", "seeds_kept"]
    for lk in layers:
        if "fixed" in params["modes"]:
            paths += [f"{lk}.success_rate.{metric_key('eps', e)}" for e in params["eps"]]
        if "growing" in params["modes"]:
            paths.append(f"{lk}.growing_success_rate")
        paths.append(f"{lk}.median_eps")
    return paths


def skip_warning(reason: str) -> dict[str, Any]:
    return Warning_("generator_layers_skipped", f"generator-layer perturbations skipped: {reason}", {}).to_dict()


class GeneratorLayersPart(Part[Shard, Final]):
    """3a: feature perturbations at a generator's layers, coarse to fine."""

    name = "generator_layers"
    help = "3a: generator-layer feature perturbations"
    schema = SCHEMA

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        g = self.own(params)
        errors = {}
        if g["enabled"] and "growing" in g["modes"] and g["max_eps"] / g["eps_growth"] > MAX_GROWING_STEPS:
            errors["eps_growth"] = (f"max_eps / eps_growth is {g['max_eps'] / g['eps_growth']:.0f} steps; at most "
                                    f"{MAX_GROWING_STEPS}: raise eps_growth")
        if g["card"] and not g["generator"]:
            errors["card"] = "card is set but generator is not: give the weights too"
        if colliding("eps", g["eps"]):
            errors["eps"] = "budgets must differ at 4 significant digits (they are metric keys)"
        return errors

    def units(self, params: Mapping[str, Any]) -> int:
        return units(self.own(params))

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return metric_paths(self.own(params))

    def run(self, inputs: Shard) -> dict[str, Any]:
        # TorchScript's profiling executor re-optimises the backward graph for every new batch
        # shape (seconds each on a CPU); seeds come in chunks of varying size, so run unoptimised.
        with torch.jit.optimized_execution(False):
            return run(inputs)

    def merge(self, a: Any, b: Any) -> Any:
        return merge(a, b, examples=MERGED_EXAMPLES)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        if partial.get("skipped"):
            return PartResult(None, warnings=[skip_warning(partial["skipped"])])
        ctx, own = inputs.ctx, self.own(inputs.params)
        out = PartResult(metrics(partial, own), extra={"generator": partial.get("generator")})
        for layer in partial["layers"]:
            shown = partial["examples"].get(layer, [])[:own["examples"]]
            if shown:
                path = ctx.artifacts.path(inputs.suite, f"generator_{layer_key(layer)}.png")
                example_grid(shown, path, title=f"layer {layer}", class_names=list(ctx.classifier.card.class_names))
                out.artifacts.append(ctx.artifacts.relative(path))
        assert out.metrics is not None
        kept, drawn = out.metrics["seeds_kept"]["value"], out.metrics["seeds_drawn"]["value"]
        if drawn and kept is not None and kept < 0.5 * drawn:
            out.warnings.append(Warning_("generator_seeds_rejected", f"the model classifies only {kept:.0f} of "
                                         f"{drawn:.0f} generated seeds as their class: the generator may not fit "
                                         "this model or dataset", {"kept": kept, "drawn": drawn}).to_dict())
        return out
