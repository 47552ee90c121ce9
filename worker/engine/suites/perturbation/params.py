"""Parameters of the perturbation suite: one object per part (3a, 3b, 3c)."""

from __future__ import annotations

from ...params import Param, ParamKind, ParamSchema
from .corruptions import CORRUPTIONS
from .generator_layers import Spread
from .geometric import Padding

#: growing mode may take at most this many steps (max_eps / eps_growth).
MAX_GROWING_STEPS = 5000

CORRUPTION_PARAMS = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the common corruptions (ImageNet-C)"),
    Param("names", ParamKind.CHOICE_LIST, list(CORRUPTIONS), "corruptions to apply",
          choices=tuple(CORRUPTIONS), max_items=len(CORRUPTIONS)),
    Param("severities", ParamKind.INT_LIST, [1, 2, 3, 4, 5], "ImageNet-C severities", minimum=1, maximum=5,
          max_items=5),
))

GEOMETRIC_PARAMS = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the geometric transforms"),
    Param("rotations", ParamKind.FLOAT_LIST, [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0],
          "rotation angles in degrees (counter-clockwise) of the grid", minimum=-180, maximum=180),
    Param("translations", ParamKind.FLOAT_LIST, [-3.0, 0.0, 3.0],
          "shifts in pixels (model input size), used for x and y alike", minimum=-64, maximum=64, max_items=16),
    Param("scales", ParamKind.FLOAT_LIST, [0.8, 0.9, 1.1, 1.2], "zoom factors about the centre (1 = unchanged)",
          minimum=0.25, maximum=4.0),
    Param("padding", ParamKind.CHOICE, Padding.ZEROS.value, "fill outside the image",
          choices=tuple(p.value for p in Padding)),
))

GENERATOR_PARAMS = ParamSchema((
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
          "or max - min over the reference batch", choices=tuple(s.value for s in Spread)),
    Param("reference_batch", ParamKind.INT, 256, "latents in the spread estimate", minimum=2, maximum=4096),
    Param("resize_output", ParamKind.BOOL, False, "resize generator images to the model's input size when "
          "they differ (otherwise that is an error)"),
    Param("examples", ParamKind.INT, 6, "example pairs per layer in the PNG grid", minimum=0, maximum=32),
))

SCHEMA = ParamSchema((
    Param("corruptions", ParamKind.OBJECT, None, "3b: common corruptions", schema=CORRUPTION_PARAMS),
    Param("geometric", ParamKind.OBJECT, None, "3c: rotations, translations, scales", schema=GEOMETRIC_PARAMS),
    Param("generator_layers", ParamKind.OBJECT, None, "3a: generator-layer feature perturbations",
          schema=GENERATOR_PARAMS),
))
