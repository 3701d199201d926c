"""Test-time adaptation methods behind one interface (see ``base.Adapter``)."""

import inspect

from .base import Adapter, Episodic, Source, make_optimizer
from .eata import Eata, entropy_margin, paper_lr, sample_selection
from .ensemble import (
    RULES,
    Ensemble,
    combine,
    disagreement,
    ensemble_grid,
    ensemble_results,
    fit_temperature,
)
from .episodic import Snapshot, frozen, select_parameters
from .losses import marginal_entropy
from .memo import Memo
from .memo_plus import MemoPlus
from .norm import NormAdapt, Tent, batchnorm_train_mode, entropy, has_batchnorm
from .sar import Sar, sar_parameters
from .tda import FeatureCache, Tda
from .tpt import PromptLearner, Tpt, confident_views, prompt_classifier, tpt_views
from .zero import Zero, zero_vote


def _clip_of(model):
    clip_model = getattr(model, "clip_model", None)
    if clip_model is None:
        raise ValueError("TPT and fixed prompts need a CLIP classifier (from clip_classifier "
                         "or build_classifier with a CLIP name); this model has no text side.")
    return clip_model


def tpt(model, **options) -> Tpt:
    """TPT on a CLIP classifier's model and classes."""
    return Tpt(_clip_of(model), model.class_names, **options)


def prompt(model, **options) -> Source:
    """A CLIP classifier with a fixed prompt context: TPT's starting point ("a photo of a")
    or a learned CoOp context (``ctx_file``), without test-time adaptation."""
    adapter = Source(prompt_classifier(_clip_of(model), model.class_names, **options))
    adapter.name = "prompt"
    return adapter


METHODS = {"source": Source, "norm": NormAdapt, "tent": Tent, "memo": Memo,
           "memo_plus": MemoPlus, "tpt": tpt, "prompt": prompt, "zero": Zero, "tda": Tda,
           "eata": Eata, "sar": Sar}
# Zero runs on any classifier's logits but is a method for vision-language models; TDA needs
# CLIP's image features and zero-shot head.
CLIP_ONLY = ("tpt", "prompt", "zero", "tda")
# The methods whose predictions for a batch of test images depend on that batch alone, so that
# a grid on a cluster may split their cells into parts of whole batches (``grid.run_grid``):
# the episodic per-image methods (each image starts from the source model, its views seeded by
# its index) and NormAdapt (each batch's own statistics, the source ones restored after it).
# Not Tent, EATA and SAR (weights carried from batch to batch), nor TDA (a cache that grows
# along the stream): their cells run whole. ``tests/test_cluster.py`` checks both kinds.
SHARDABLE = ("source", "memo", "memo_plus", "tpt", "zero", "prompt", "norm")


def method_module(name: str) -> str:
    """The module that implements a method: where the code fingerprint of its results starts
    (``evaluate.cell_code``); TPT and fixed prompts are built here from ``tpt``'s classes."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
    return Tpt.__module__ if name in ("tpt", "prompt") else METHODS[name].__module__


def build_method(name: str, model, **options) -> Adapter:
    """A method by name (``source``, ``norm``, ``tent``, ``memo``, ``memo_plus``, ``tpt``,
    ``prompt``, ``zero``, ``tda``, ``eata``, ``sar``)."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
    return METHODS[name](model, **options)


__all__ = ["Adapter", "Episodic", "Source", "NormAdapt", "Tent", "Memo", "MemoPlus", "Tpt",
           "Snapshot", "PromptLearner", "METHODS", "build_method", "entropy", "marginal_entropy",
           "make_optimizer", "select_parameters", "has_batchnorm", "method_factories",
           "view_settings", "method_module", "SHARDABLE", "passes_per_image",
           "confident_views", "prompt_classifier", "tpt", "prompt", "Ensemble", "RULES",
           "combine", "disagreement", "ensemble_grid", "ensemble_results", "fit_temperature",
           "Zero", "zero_vote", "Tda", "FeatureCache", "Eata", "Sar", "sample_selection",
           "entropy_margin", "paper_lr", "sar_parameters", "batchnorm_train_mode", "frozen",
           "tpt_views"]


VIEW_SETTINGS = ("views", "n_views", "selection", "keep")
# The methods that update on every test batch (a forward and a backward pass per image).
ONLINE = ("norm", "tent", "eata", "sar")


def passes_per_image(name: str, settings: dict) -> int:
    """About how many passes through the model a method makes per test image, from its
    settings and its defaults: a view-based method one per view and once more per update
    step, an online one two (forward and backward), the others one. What a cluster's work is
    ordered by, longest first (``grid.grid_on_cluster``), so that no worker is left alone
    with a long part at the end while the other idles: a rough count, never a result."""
    signature = inspect.signature(Tpt if name == "tpt" else METHODS[name])
    defaults = {k: p.default for k, p in signature.parameters.items()}
    views = settings.get("n_views", defaults.get("n_views")) or 0
    steps = settings.get("steps", defaults.get("steps")) or 0
    if views:
        return 1 + views * (1 + steps)
    return 2 if name in ONLINE else 1


def view_settings(settings: dict) -> dict:
    """The options of a TPT setting that choose its views and which of them it keeps: what
    Zero takes to see (and select) exactly TPT's views."""
    return {k: v for k, v in settings.items() if k in VIEW_SETTINGS}


def method_factories(names, options: dict | None = None, per_model: dict | None = None):
    """For ``grid.run_grid``: each method name mapped to ``f(model, model_name)``.
    ``options[method]`` are the method's settings; ``per_model[method][model_name]`` overrides
    some of them for one model (MEMO's learning rate differs between a CLIP and a CNN).
    NormAdapt is reported as not applicable to models without batch norm, TPT, fixed
    prompts, Zero and TDA to models without a text side."""
    options, per_model = options or {}, per_model or {}

    def factory(name):
        def settings(model_name):
            return {**options.get(name, {}), **(per_model.get(name, {}).get(model_name) or {})}

        def make(model, model_name):
            if name == "norm" and not has_batchnorm(model):
                return None
            if name in CLIP_ONLY and getattr(model, "clip_model", None) is None:
                return None
            return build_method(name, model, **settings(model_name))
        make.settings = settings  # what a results store compares to reuse a finished cell
        make.code_modules = [method_module(name)]  # and where its code fingerprint starts
        make.shardable = name in SHARDABLE  # whether a cell's images may be split (a cluster)
        make.passes = lambda model_name: passes_per_image(name, settings(model_name))
        return make

    return {name: factory(name) for name in names}
