"""The transfer-learning study: a configurable CNN cut at a layer (kept layers frozen or
trained, the rest re-initialised or removed), fine-tuned on new classes over fractions of the
data and repeats trained together, against baselines from scratch; clustering with ARI."""

from .batched import Stack, accuracy_together, batch_schedule, train_one, train_together
from .clustering import clustering_ari, kmeans_ari, layer_activations
from .network import (
    AFTER_CUT,
    CnnConfig,
    build_cnn,
    check_cut,
    kept_layers,
    layer_shapes,
    new_layers,
)
from .study import (
    FRACTIONS,
    VARIANTS,
    PretrainConfig,
    SeriesConfig,
    check_fractions,
    class_images,
    gain_over_baseline,
    parse_variant,
    pretrained,
    repeats_for,
    run_series,
    run_series_or_skip,
    series_config,
    setting_scores,
    stratified_subset,
    task_data,
)

__all__ = ["AFTER_CUT", "FRACTIONS", "VARIANTS", "CnnConfig", "PretrainConfig", "SeriesConfig",
           "Stack", "accuracy_together", "batch_schedule", "build_cnn", "check_cut",
           "check_fractions", "class_images", "clustering_ari", "gain_over_baseline",
           "kept_layers", "kmeans_ari", "layer_activations", "layer_shapes", "new_layers",
           "parse_variant", "pretrained", "repeats_for", "run_series", "run_series_or_skip",
           "series_config", "setting_scores", "stratified_subset", "task_data", "train_one",
           "train_together"]
