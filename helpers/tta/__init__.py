"""Test-time adaptation methods behind one interface (see ``base.Adapter``), each registered
by name where it is defined (``registry.register``)."""

import importlib
import pkgutil

from .base import Adapter, Episodic, Source, make_optimizer
from .eata import Eata, entropy_margin, paper_lr, sample_selection
from .ensemble import RULES, Ensemble, combine, disagreement, fit_temperature
from .episodic import Snapshot, frozen, select_parameters
from .losses import entropy, marginal_entropy
from .memo import Memo
from .memo_plus import MemoPlus
from .norm import NormAdapt, OnlineNormAdapter, Tent, batchnorm_train_mode, has_batchnorm
from .registry import MethodInfo, method_info, method_names, register, unregister
from .sar import Sar, sar_parameters
from .tda import FeatureCache, Tda
from .tpt import (
    PromptLearner,
    Tpt,
    clip_of,
    confident_views,
    prompt,
    prompt_classifier,
    tpt,
    tpt_views,
)
from .zero import Zero, zero_vote

__all__ = ["Adapter", "Episodic", "Source", "NormAdapt", "Tent", "OnlineNormAdapter", "Memo",
           "MemoPlus", "Tpt", "Snapshot", "PromptLearner", "build_method", "entropy",
           "marginal_entropy", "make_optimizer", "select_parameters", "has_batchnorm",
           "method_factories", "view_settings", "method_module", "passes_per_image",
           "confident_views", "prompt_classifier", "tpt", "prompt", "clip_of", "Ensemble",
           "RULES", "combine", "disagreement", "fit_temperature", "Zero", "zero_vote", "Tda",
           "FeatureCache", "Eata", "Sar", "sample_selection", "entropy_margin", "paper_lr",
           "sar_parameters", "batchnorm_train_mode", "frozen", "tpt_views", "MethodInfo",
           "method_info", "method_names", "register", "unregister"]


def _import_methods() -> None:
    """Import every module of this package, so that each method registers itself: a new method
    is its module (``@register``) and its test, nothing here."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_methods()


def method_module(name: str) -> str:
    """The module that implements a method: where the code fingerprint of its results starts
    (``evaluate.cell_code``)."""
    return method_info(name).module


def build_method(name: str, model, **options) -> Adapter:
    """A method by name (see ``method_names()``) around a classifier."""
    return method_info(name).build(model, **options)


def passes_per_image(name: str, settings: dict) -> int:
    """About how many passes through the model a method makes per test image (see
    ``MethodInfo.passes_per_image``)."""
    return method_info(name).passes_per_image(settings)


VIEW_SETTINGS = ("views", "n_views", "selection", "keep")


def view_settings(settings: dict) -> dict:
    """The options of a TPT setting that choose its views and which of them it keeps: what
    Zero takes to see (and select) exactly TPT's views."""
    return {k: v for k, v in settings.items() if k in VIEW_SETTINGS}


def method_factories(names, options: dict | None = None, per_model: dict | None = None):
    """For ``grid.run_grid``: each method name mapped to ``f(model, model_name)``.
    ``options[method]`` are the method's settings; ``per_model[method][model_name]`` overrides
    some of them for one model (MEMO's learning rate differs between a CLIP and a CNN).
    A method that needs batch norm (NormAdapt) or a text side (TPT, fixed prompts, Zero,
    TDA) is reported as not applicable to a model without it (``MethodInfo``)."""
    options, per_model = options or {}, per_model or {}

    def factory(name):
        def settings(model_name):
            return {**options.get(name, {}), **(per_model.get(name, {}).get(model_name) or {})}

        info = method_info(name)

        def make(model, model_name):
            if info.needs_batchnorm and not has_batchnorm(model):
                return None
            if info.needs_text and getattr(model, "clip_model", None) is None:
                return None
            return info.build(model, **settings(model_name))
        make.settings = settings  # what a results store compares to reuse a finished cell
        make.code_modules = [info.module]  # and where its code fingerprint starts
        make.shardable = info.shardable  # whether a cell's images may be split (a cluster)
        make.passes = lambda model_name: info.passes_per_image(settings(model_name))
        return make

    return {name: factory(name) for name in names}
