"""Visual Prompt Tuning on a timm ViT, attention backends, gradient checkpointing, and a
meter of training-step memory and time (see :mod:`.model`, :mod:`.meter`, :mod:`.small`)."""

from .meter import StepConfig, measure_grid, measure_step, measure_steps
from .model import (
                    ATTENTION,
                    MODES,
                    VIT_B16,
                    PromptedViT,
                    build_vit,
                    expected_trainable,
                    load_backbone_weights,
                    prompted_vit,
                    train_step,
)

__all__ = ["ATTENTION", "MODES", "VIT_B16", "PromptedViT", "StepConfig", "build_vit",
           "expected_trainable", "load_backbone_weights", "measure_grid", "measure_step",
           "measure_steps", "prompted_vit", "train_step"]
