"""The transfer-learning study: pretrain on some classes, fine-tune on others, cut at a layer.

A **series** pretrains the CNN on ``pretrain.classes`` of one data set (cached by config) and
fine-tunes it on ``classes`` of the same or another data set, for every learning rate,
fraction of the fine-tuning data, variant (after the cut: ``reinit`` or ``truncate``; before
it: ``frozen`` or ``trainable``), cut point and repeat; **baselines** train the same network
from scratch on the same subsets, with the same batch order. The repeats of one setting train
together (:mod:`.batched`). Every run is appended to the series' results file
(``RunLog``), so an interrupted series resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

from .. import data, fingerprint
from ..anchors import finding_table
from ..evaluate import RunLog
from ..models import cached_training, default_device
from .batched import accuracy_together, batch_schedule, train_early_stopped, train_one
from .network import CnnConfig, build_cnn, check_after, check_cut, kept_layers, new_layers

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
VARIANTS = ("reinit/frozen", "reinit/trainable", "truncate/frozen", "truncate/trainable")
# Data sets with a train/test split of their own; of the others, TEST_SHARE is held out.
OWN_SPLIT = ("fashion-mnist", "mnist-full", "cifar10", "flowers102", "cub200")
TEST_SHARE = 0.2
RUN_KEY = ("lr", "fraction", "variant", "cut", "repeat")
MIN_VAL_PER_CLASS = 10


def seed_of(*parts) -> int:
    """A reproducible 63-bit seed from any values (Python's hash() is salted per process)."""
    return int(hashlib.sha1(repr(parts).encode()).hexdigest()[:15], 16)


# ---------------------------------------------------------------- data

def check_classes(classes, what: str) -> tuple:
    classes = tuple(int(c) for c in classes)
    if not classes:
        raise ValueError(f"{what} classes are empty: give at least two class indices, "
                         "e.g. [0, 1, 2, 3, 4]")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{what} classes repeat a class: {list(classes)}")
    return classes


def check_fractions(fractions) -> tuple:
    fractions = tuple(float(f) for f in fractions)
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ValueError(f"fractions of the fine-tuning data must lie in (0, 1]; got {bad or '[]'}"
                         " (1 is all of it, 0.01 one percent)")
    return fractions


def check_overlap(pretrain_dataset, pretrain_classes, dataset, classes, allow: bool) -> None:
    """Fine-tuning on classes the network was pretrained on (same data set) measures
    re-learning, not transfer: warn, unless the caller says it is intended."""
    shared = sorted(set(pretrain_classes) & set(classes))
    if shared and pretrain_dataset == dataset and not allow:
        warnings.warn(f"pretraining and fine-tuning share classes {shared} of {dataset}: the "
                      "fine-tuned network has seen them; pass allow_overlap=True if intended",
                      stacklevel=3)


@lru_cache(maxsize=4)
def _splits(name: str, root=None, download: bool = False, size: int | None = None):
    """(train, test) of a data set; sets without a split hold out TEST_SHARE at random.
    ``size``: the side at which sets of photos (Flowers-102, CUB-200) are decoded."""
    if name in OWN_SPLIT:
        return tuple(data.load_dataset(name, split, root=root, download=download, size=size)
                     for split in ("train", "test"))
    whole = data.load_dataset(name, root=root, download=download, size=size)
    test, train = data.split(whole, round(TEST_SHARE * len(whole)), seed=0)
    return train, test


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images at ``size``: larger ones resized, smaller ones (8x8 digits) resized to 20/28
    of the side and zero-padded, as MNIST centres its 20x20 digits in 28x28."""
    side = images.shape[-1]
    if side == size:
        return images
    inner = size if side > size else round(size * 20 / 28)
    images = F.interpolate(images, size=(inner, inner), mode="bilinear", antialias=side > inner,
                           align_corners=False)
    pad = size - inner
    return F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))


def class_images(name: str, classes, split: str, n: int | None = None, seed: int = 0,
                 root=None, download: bool = False, size: int | None = None):
    """(uint8 images N x 3 x H x W, labels 0..K-1, class names) of ``classes`` of a data set's
    split, in the order given (``"all"``: every class of the set, in its order); ``n``
    random items at most. ``root``, ``download`` and ``size`` (the side of sets of photos) go
    to :func:`helpers.data.load_dataset`. What every task of both studies starts from."""
    dataset = _splits(name, root, download, size)[split == "test"]
    count = len(dataset.class_names)
    classes = tuple(range(count)) if classes == "all" else check_classes(classes, "the")
    missing = sorted(set(classes) - set(range(count)))
    if missing:
        raise ValueError(f"{name} has classes 0..{count - 1}; no {missing}")
    keep = torch.isin(dataset.labels, torch.tensor(classes)).nonzero().flatten()
    note = "all classes" if len(classes) == count else f"classes {list(classes)}"
    dataset = data.take(dataset.subset(keep, note), n, seed)
    remap = torch.full((count,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return dataset.images, remap[dataset.labels], [dataset.class_names[c] for c in classes]


def task_data(name: str, classes, split: str, config: CnnConfig, n: int | None = None,
              seed: int = 0, root=None, download: bool = False):
    """Inputs (normalised to [-1, 1], the network's channels and size) and labels 0..K-1 of
    ``classes`` (in that order) from a data set's split; ``n`` random items at most.
    ``root`` and ``download`` are passed to :func:`helpers.data.load_dataset`."""
    images, labels, _ = class_images(name, classes, split, n, seed, root, download)
    images = images.float() / 255
    images = images[:, :1] if config.in_channels == 1 else images[:, :config.in_channels]
    return (_fit(images, config.image_size) - 0.5) / 0.5, labels


def stratified_subset(labels: torch.Tensor, fraction: float, generator) -> torch.Tensor:
    """Indices of ``fraction`` of every class (at least one item each), shuffled: the same
    size for every seed, so the repeats of a fraction stack."""
    parts = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        parts.append(members[torch.randperm(len(members), generator=generator)[:count]])
    subset = torch.cat(parts)
    return subset[torch.randperm(len(subset), generator=generator)]


def repeats_for(fraction: float, min_repeats: int, max_repeats: int) -> int:
    """More repeats for small fractions: ``min_repeats`` from 10% of the data up, then growing as
    1/sqrt(fraction) (runs on little data vary more), capped at ``max_repeats``."""
    grown = math.ceil(min_repeats * math.sqrt(0.1 / fraction) - 1e-9)
    return max(min_repeats, min(max_repeats, grown))


# ---------------------------------------------------------------- pretraining

@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining on a class subset, early stopping on a validation split; cached by config."""

    dataset: str = "fashion-mnist"
    classes: tuple = (0, 1, 2, 3, 4)
    cnn: CnnConfig = field(default_factory=CnnConfig)
    n_train: int | None = 10000          # random training images (None: all of the classes')
    val_share: float = 0.1
    max_epochs: int = 6
    patience: int = 1                    # epochs without a better validation accuracy
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "classes", check_classes(self.classes, "pretraining"))
        if isinstance(self.cnn, dict):
            object.__setattr__(self, "cnn", CnnConfig(**self.cnn))
        if self.cnn.num_classes != len(self.classes):
            object.__setattr__(self, "cnn", self.cnn.with_classes(len(self.classes)))


def _pretrain(config: PretrainConfig, root=None, download: bool = False):
    """Adam epoch by epoch; keep (checkpoint) the weights of the best validation accuracy and
    stop after ``patience`` epochs without improvement."""
    device = default_device()
    x, y = (t.to(device) for t in task_data(config.dataset, config.classes, "train", config.cnn,
                                             config.n_train, config.seed, root, download))
    n_val = max(1, round(config.val_share * len(y)))
    val, train = torch.arange(n_val, device=device), torch.arange(n_val, len(y), device=device)
    torch.manual_seed(config.seed)
    net = build_cnn(config.cnn).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    best, history, start = None, [], time.time()
    steps = len(train) // min(config.batch_size, len(train))
    for epoch in range(config.max_epochs):
        schedule = batch_schedule(len(train), config.batch_size, steps, generator)
        train_one(net, x, y, train, schedule, config.lr, optimizer)
        with torch.no_grad():
            accuracy = float((net(x[val]).argmax(1) == y[val]).float().mean())
        history.append(round(accuracy, 4))
        if best is None or accuracy > best[1]:
            best = ({k: v.cpu().clone() for k, v in net.state_dict().items()}, accuracy,
                    epoch + 1)
        elif epoch + 1 - best[2] >= config.patience:
            break
    metrics = {"val_accuracy": history, "best_epoch": best[2], "epochs_run": len(history),
               "train_images": len(train), "train_seconds": round(time.time() - start, 1)}
    return best[0], metrics


def pretrained(config: PretrainConfig, verbose: bool = True, root=None, download: bool = False):
    """The pretrained network (eval mode) and its training metrics, trained once per config.
    ``root`` and ``download`` (where the data is, and whether to fetch it when missing) are
    not part of the config: they do not change the network, so not its cache key either."""
    train = partial(_pretrain, root=root, download=download)
    file = cached_training("transfer-cnn", config, train, verbose)
    saved = torch.load(file, map_location="cpu", weights_only=True)
    net = build_cnn(config.cnn)
    net.load_state_dict(saved["state_dict"])
    return net.eval(), saved["metrics"]


# ---------------------------------------------------------------- fine-tuning series

def parse_variant(variant: str) -> tuple[str, bool]:
    """``"reinit/frozen"`` -> ("reinit", True)."""
    after, _, before = variant.partition("/")
    if before not in ("frozen", "trainable"):
        raise ValueError(f"variant {variant!r}: write '<after>/<before>' with <after> in "
                         f"reinit | truncate and <before> in frozen | trainable; e.g. {VARIANTS}")
    return check_after(after), before == "frozen"


@dataclass(frozen=True)
class SeriesConfig:
    """One experiment series: a pretrained network fine-tuned on ``classes`` of ``dataset``."""

    name: str
    pretrain: PretrainConfig
    dataset: str = "fashion-mnist"
    classes: tuple = (5, 6, 7, 8, 9)
    n_train: int | None = 3000           # the fine-tuning pool; fractions are of it
    n_test: int | None = 1000
    fractions: tuple = FRACTIONS
    cuts: tuple | str = "all"
    variants: tuple = VARIANTS
    learning_rates: tuple = (1e-3,)
    min_repeats: int = 5
    max_repeats: int = 10
    # Every training (baselines and variants alike) stops early on a validation split of the
    # pool: ``val_share`` of each class, held out of every subset (fractions are of the rest);
    # a fraction reads ``val_ratio`` validation images per training image of it (at least
    # MIN_VAL_PER_CLASS per class, at most the split: evaluating 400 images every 10 steps of
    # 5 would cost more than the training); accuracy on them every ``eval_every`` steps, stop
    # after ``patience`` evaluations without a better one, keep the best weights;
    # ``max_steps`` at most.
    val_share: float = 0.2
    val_ratio: float = 4.0
    eval_every: int = 10
    patience: int = 3
    max_steps: int = 300
    batch_size: int = 64
    baselines: bool = True
    allow_overlap: bool = False
    seed: int = 0

    def __post_init__(self):
        check_classes(self.classes, "fine-tuning")
        if len(self.classes) < 2:
            raise ValueError("fine-tuning needs at least two classes")
        object.__setattr__(self, "fractions", check_fractions(self.fractions))
        for variant in self.variants:
            parse_variant(variant)
        cuts = self.cut_points()
        for cut in cuts:
            check_cut(self.network(), cut)
        if self.val_ratio <= 0:
            raise ValueError(f"val_ratio (validation images per training image) must be > 0, "
                             f"got {self.val_ratio}")
        if not 0 < self.val_share < 1:
            raise ValueError(f"val_share is the share of the fine-tuning pool held out for "
                             f"early stopping, in (0, 1); got {self.val_share}")
        if min(self.eval_every, self.patience, self.max_steps) < 1:
            raise ValueError("eval_every, patience and max_steps must be >= 1; got "
                             f"{self.eval_every}, {self.patience}, {self.max_steps}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, "
                             f"{self.max_repeats}")
        check_overlap(self.pretrain.dataset, self.pretrain.classes, self.dataset, self.classes,
                      self.allow_overlap)

    def network(self) -> CnnConfig:
        return self.pretrain.cnn.with_classes(len(self.classes))

    def cut_points(self) -> tuple:
        if self.cuts == "all":
            return tuple(range(1, self.network().n_layers))
        return tuple(self.cuts)

    def identical_settings(self) -> list[dict]:
        """Settings that equal another by construction, each with the one it equals: at the
        last cut only the output layer is new, and ``reinit`` (the network's own output
        layer) and ``truncate`` (a new output layer reading the cut layer) build the same
        layer from the same seed, so ``truncate/<x>`` there is ``reinit/<x>``."""
        last = self.network().n_layers - 1
        return [{"variant": v, "cut": last, "same_as": f"reinit/{v.partition('/')[2]}",
                 "reason": f"at cut {last} only the output layer is new, and reinit and "
                           "truncate build the same output layer from the same seed"}
                for v in self.variants
                if v.startswith("truncate/") and last in self.cut_points()
                and f"reinit/{v.partition('/')[2]}" in self.variants]

    def settings(self) -> list[tuple[str, int]]:
        """(variant, cut) of every training of a fraction: the baseline (cut 0) first; a
        setting identical to another by construction (:meth:`identical_settings`) once."""
        settings = [("baseline", 0)] if self.baselines else []
        same = {(s["variant"], s["cut"]) for s in self.identical_settings()}
        return settings + [(v, c) for v in self.variants for c in self.cut_points()
                           if (v, c) not in same]


class PrefixInputs:
    """Input tensors (the fine-tuning pool, validation and test sets) as a setting's
    trainable layers read them: raw, or through the frozen prefix (computed once per cut: a
    frozen prefix without batch norm is a fixed function)."""

    def __init__(self, net, *splits):
        self.net, self.raw, self.cache = net, splits, {}

    def __call__(self, variant: str, cut: int):
        if variant == "baseline" or not parse_variant(variant)[1]:
            return self.raw
        if cut not in self.cache:
            with torch.no_grad():
                prefix = self.net[:cut]
                self.cache[cut] = tuple(torch.cat([prefix(x[i:i + 1024])
                                                   for i in range(0, len(x), 1024)])
                                        for x in self.raw)
        return self.cache[cut]


def fresh_modules(config: SeriesConfig, net, variant: str, cut: int, repeats: int):
    """Fresh trainable modules, one per repeat (the new layers drawn from the repeat's seed)."""
    modules = []
    for repeat in range(repeats):
        torch.manual_seed(seed_of(config.seed, "init", repeat))
        if variant == "baseline":
            modules.append(build_cnn(config.network()))
            continue
        after, frozen = parse_variant(variant)
        fresh = new_layers(config.network(), cut, after)
        modules.append(fresh if frozen else torch.nn.Sequential(*kept_layers(net, cut), *fresh))
    return modules


def validation_split(labels: torch.Tensor, share: float, seed: int):
    """(validation, training) indices of a fine-tuning pool: ``share`` of every class held
    out for early stopping (never the test set), the same for every fraction and setting."""
    held = stratified_subset(labels, share, torch.Generator().manual_seed(
        seed_of(seed, "validation")))
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held] = False
    return held.sort().values, rest.nonzero().flatten()


def validation_rows(labels: torch.Tensor, n_train: int, ratio: float, seed: int):
    """The rows of the validation split that a fraction training on ``n_train`` images reads:
    ``ratio * n_train`` of them, the same count from each class (at least
    MIN_VAL_PER_CLASS, at most what the split holds), drawn once per (seed, size)."""
    classes = labels.unique()
    per_class = max(MIN_VAL_PER_CLASS, math.ceil(ratio * n_train / len(classes)))
    generator = torch.Generator().manual_seed(seed_of(seed, "validation rows", n_train))
    parts = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        parts.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(parts).sort().values


def _subsets_and_schedules(config: SeriesConfig, labels, fraction: float, repeats: int):
    """Per repeat, its training subset (R x n) and batch order (R x max_steps x B), drawn
    from (seed, fraction, repeat) only: the baseline and every variant see the same ones."""
    subsets = torch.stack([stratified_subset(labels, fraction, torch.Generator().manual_seed(
        seed_of(config.seed, fraction, r))) for r in range(repeats)])
    steps = config.max_steps
    schedules = torch.stack([batch_schedule(subsets.shape[1], config.batch_size, steps,
                                            torch.Generator().manual_seed(
                                                seed_of(config.seed, "order", fraction, r)))
                             for r in range(repeats)])
    return subsets, schedules, steps


def run_series(config: SeriesConfig, path, verbose: bool = True, device=None, root=None,
               download: bool = False) -> list[dict]:
    """Every run of a series, resuming from ``path``; returns all of its run records. Each
    training stops early on the pool's validation split (:func:`validation_split`, the same
    rule for baselines and variants); a record says at which step it kept its weights
    (``best_step``), how long it trained (``steps``) and whether the maximum stopped it
    (``capped``). ``root`` (default paths.DATA) and ``download`` (fetch a missing MNIST,
    FashionMNIST or CIFAR-10 when online) go to the data loaders."""
    device = torch.device(device or default_device())
    net, metrics = pretrained(config.pretrain, verbose, root, download)
    net = net.to(device)
    log = RunLog(path, {"series": asdict(config), "pretraining": metrics}, RUN_KEY,
                 code=fingerprint.closure(__name__))
    cnn = config.network()
    pool_x, pool_y = task_data(config.dataset, config.classes, "train", cnn, config.n_train,
                               config.seed, root, download)
    held, rest = validation_split(pool_y, config.val_share, config.seed)
    train_x, train_y, val_x, val_y = (t.to(device) for t in (
        pool_x[rest], pool_y[rest], pool_x[held], pool_y[held]))
    test_x, test_y = (t.to(device) for t in task_data(
        config.dataset, config.classes, "test", cnn, config.n_test, config.seed, root, download))
    inputs = PrefixInputs(net, train_x, val_x, test_x)
    names = cnn.layer_names()
    for lr in config.learning_rates:
        for fraction in config.fractions:
            repeats = repeats_for(fraction, config.min_repeats, config.max_repeats)
            subsets, schedules, _ = _subsets_and_schedules(config, train_y.cpu(), fraction,
                                                           repeats)
            subsets = subsets.to(device)
            rows = validation_rows(val_y.cpu(), subsets.shape[1], config.val_ratio,
                                   config.seed).to(device)
            for variant, cut in config.settings():
                todo = [r for r in range(repeats)
                        if not log.has(lr=lr, fraction=fraction, variant=variant, cut=cut,
                                       repeat=r)]
                if not todo:
                    continue
                x_train, x_val, x_test = inputs(variant, cut)
                start = time.time()
                modules = [m.to(device) for m in fresh_modules(config, net, variant, cut, repeats)]
                stack, stops = train_early_stopped(modules, x_train, train_y, subsets, schedules,
                                                   lr, x_val[rows], val_y[rows],
                                                   config.eval_every, config.patience)
                train_acc = accuracy_together(stack, x_train, train_y, subsets)
                test_acc = accuracy_together(stack, x_test, test_y)
                seconds = (time.time() - start) / repeats
                log.add([{"series": config.name, "lr": lr, "fraction": fraction,
                          "n_train": subsets.shape[1], "variant": variant, "cut": cut,
                          "cut_after": names[cut - 1] if cut else "input", "repeat": r,
                          "steps": int(stops["steps"][r]),
                          "best_step": int(stops["best_step"][r]), "n_val": len(rows),
                          "capped": bool(stops["capped"][r]),
                          "train_accuracy": round(float(train_acc[r]), 4),
                          "test_accuracy": round(float(test_acc[r]), 4),
                          "seconds": round(seconds, 3)} for r in todo])
    return log.runs


def run_series_or_skip(config: SeriesConfig, path, root=None, download: bool = False,
                       **options) -> tuple[list[dict] | None, str | None]:
    """``run_series``, or, when a data set of the series cannot be had here (not on disk and
    not downloaded: ``helpers.data.UNAVAILABLE``), no runs and a note that says why: a series
    the profile lists "when the data is there" is skipped, and the study goes on."""
    try:
        return run_series(config, path, root=root, download=download, **options), None
    except data.UNAVAILABLE as error:
        return None, f"{config.name} skipped: {error}"


def series_config(spec, cnn: dict, pretrain: dict, finetune: dict, **options) -> SeriesConfig:
    """A series from ``"A->B"`` (pretrain on data set A, fine-tune on B) or a dict with keys
    ``pretrain``, ``finetune`` and optionally ``cnn`` / ``name`` (e.g. CIFAR-10 needs
    ``in_channels: 3, image_size: 32``); the other settings are shared by all series."""
    if isinstance(spec, str):
        source, arrow, target = spec.partition("->")
        if not arrow or not source or not target:
            raise ValueError(f"series {spec!r}: write 'pretrain-set->finetune-set', e.g. "
                             "'fashion-mnist->mnist'")
        spec = {"pretrain": source.strip(), "finetune": target.strip()}
    network = CnnConfig(**{**cnn, **spec.get("cnn", {})})
    pre = PretrainConfig(dataset=spec["pretrain"], cnn=network, **pretrain)
    name = spec.get("name", f"{spec['pretrain']}->{spec['finetune']}")
    return SeriesConfig(name=name, pretrain=pre, dataset=spec["finetune"], **finetune,
                        **options)


def gain_over_baseline(runs: list[dict], level: float = 0.95) -> list[dict]:
    """Per series, learning rate, variant, cut and fraction: mean test accuracy over the
    repeats, the baseline's on the same subsets, and the gain (difference) with its interval.
    Repeat r of a setting and of the baseline train on the same subset in the same batch order,
    so the gain is a paired difference per repeat; its ``level`` interval is Student's t over
    the repeats (none with a single repeat)."""
    import pandas as pd
    from scipy.stats import t

    df = pd.DataFrame(runs)
    keys = ["series", "lr", "fraction"]
    base = (df[df["variant"] == "baseline"][[*keys, "repeat", "test_accuracy"]]
            .rename(columns={"test_accuracy": "baseline_run"}))
    paired = df[df["variant"] != "baseline"].merge(base, on=[*keys, "repeat"])
    paired["difference"] = paired["test_accuracy"] - paired["baseline_run"]
    out = (paired.groupby([*keys, "variant", "cut", "cut_after"])
           .agg(test_accuracy=("test_accuracy", "mean"), std=("test_accuracy", "std"),
                repeats=("test_accuracy", "count"), baseline=("baseline_run", "mean"),
                gain=("difference", "mean"), gain_sd=("difference", "std"))
           .reset_index())
    half = (t.ppf((1 + level) / 2, out["repeats"].clip(lower=2) - 1) * out["gain_sd"]
            / out["repeats"] ** 0.5).where(out["repeats"] > 1)
    out["ci_low"], out["ci_high"] = out["gain"] - half, out["gain"] + half
    return out.drop(columns="gain_sd").to_dict("records")


def setting_scores(gains: list[dict]) -> list[dict]:
    """Per setting (variant, cut), over the (series, fraction) cells of ``gain_over_baseline``:
    in how many its gain's interval lies above zero (better than the baseline from scratch)
    and below zero (worse), and its mean, lowest and highest gain; best settings first."""
    import pandas as pd

    df = pd.DataFrame(gains)
    df["better"], df["worse"] = df["ci_low"] > 0, df["ci_high"] < 0
    scores = (df.groupby(["variant", "cut", "cut_after"])
              .agg(cells=("gain", "size"), better=("better", "sum"), worse=("worse", "sum"),
                   mean_gain=("gain", "mean"), lowest_gain=("gain", "min"),
                   highest_gain=("gain", "max"))
              .reset_index().sort_values(["better", "mean_gain"], ascending=False))
    return scores.to_dict("records")


# ---------------------------------------------------------------- the notebook's study

def run_study(configs: list[SeriesConfig], series_dir, root=None,
              download: bool = False) -> dict:
    """Every series of ``configs`` (each resumed from ``series_dir/<pretrain>_to_<finetune>
    .json``), a series whose data cannot be had skipped with a note. Returns ``runs`` (all
    run records), ``done`` (the configs that ran), ``notes`` and ``pretraining`` (one row
    per series: its pretrained network's best validation accuracy and epochs)."""
    from pathlib import Path

    study = {"runs": [], "done": [], "notes": [], "pretraining": []}
    for config in configs:
        path = Path(series_dir) / f"{config.name.replace('->', '_to_')}.json"
        found, skipped = run_series_or_skip(config, path, root=root, download=download,
                                            verbose=False)
        if skipped:
            study["notes"].append(skipped)
            continue
        study["runs"] += found
        study["done"].append(config)
        _, metrics = pretrained(config.pretrain, verbose=False, root=root, download=download)
        study["pretraining"].append({
            "series": config.name, "pretrained on": config.pretrain.dataset,
            "training images": metrics["train_images"],
            "best validation accuracy": max(metrics["val_accuracy"]),
            "best epoch": metrics["best_epoch"], "epochs run": metrics["epochs_run"],
            "seconds": metrics["train_seconds"]})
    return study


def stopping_table(runs: list[dict]) -> list[dict]:
    """Per series, fraction and kind of training (the baseline from scratch, or the
    transferred settings together): mean steps trained, mean step of the kept weights, and
    the share of trainings the maximum stopped (``capped``: still improving there)."""
    import pandas as pd

    df = pd.DataFrame(runs)
    df["training"] = df["variant"].where(df["variant"] == "baseline", "transferred")
    out = (df.groupby(["series", "fraction", "training"], sort=False)
           .agg(trainings=("steps", "size"), steps=("steps", "mean"),
                best_step=("best_step", "mean"), capped=("capped", "mean"))
           .reset_index())
    return out.to_dict("records")


def ordered_variants(variants) -> list[str]:
    """Variants in the study's fixed order (:data:`VARIANTS`), others after them."""
    present = list(dict.fromkeys(variants))
    return [v for v in VARIANTS if v in present] + [v for v in present if v not in VARIANTS]


def gain_table(gains: list[dict]):
    """The gains as a table: one row per series, variant (fixed order) and cut, one column
    per fraction."""
    import pandas as pd

    df = pd.DataFrame(gains)
    df["variant"] = pd.Categorical(df["variant"], ordered_variants(df["variant"]), ordered=True)
    return df.pivot_table(index=["series", "variant", "cut"], columns="fraction", values="gain",
                          observed=True)


def study_ari(configs: list[SeriesConfig], clustering: dict, seed: int = 0, root=None) -> list:
    """:func:`clustering_ari` of each pretrained network, on test images of its own classes
    (pretraining data) and of each of its series' fine-tuning classes; rows carry the
    ``network`` and ``data`` they are about, one set of rows per (network, data)."""
    from .clustering import clustering_ari

    rows, seen = [], set()
    for config in configs:
        net, _ = pretrained(config.pretrain, verbose=False, root=root)
        names = config.pretrain.cnn.layer_names()
        for label, dataset, classes in (
                ("pretraining data", config.pretrain.dataset, config.pretrain.classes),
                ("fine-tuning data", config.dataset, config.classes)):
            network = f"pretrained on {config.pretrain.dataset}"
            data_name = f"{label} ({dataset} {min(classes)}-{max(classes)})"
            if (network, data_name) in seen:
                continue
            seen.add((network, data_name))
            x, y = task_data(dataset, classes, "test", config.pretrain.cnn,
                             clustering["n_samples"] * 2, seed, root=root)
            rows += [{"network": network, "series": config.name, "data": data_name, **row}
                     for row in clustering_ari(net, x, y, names, seed=seed, **clustering)]
    return rows


def ari_table(rows: list[dict]):
    """Mean ARI over the subsets: one row per (network, data, unit), one column per layer."""
    import pandas as pd

    table = (pd.DataFrame(rows).groupby(["network", "data", "unit", "layer"], sort=False)["ari"]
             .mean().unstack("layer"))
    return table[list(dict.fromkeys(r["layer"] for r in rows))]


def best_settings(gains: list[dict]) -> list[dict]:
    """Per series and fraction, the setting with the highest mean gain over the baseline."""
    import pandas as pd

    df = pd.DataFrame(gains).sort_values("gain").groupby(["series", "fraction"], sort=False)
    keep = ["series", "fraction", "variant", "cut", "cut_after", "repeats", "test_accuracy",
            "baseline", "gain", "ci_low", "ci_high"]
    return df.tail(1).sort_values(["series", "fraction"])[keep].to_dict("records")


def _setting_lines(gains: list[dict]) -> list[str]:
    import pandas as pd

    scores = pd.DataFrame(setting_scores(gains))
    worst = scores.sort_values(["worse", "mean_gain"], ascending=[False, True]).index[0]
    picks = list(dict.fromkeys([scores.index[0], worst]))  # one row when they are the same
    lines = [f"**{s['variant']} cut {s['cut']}** (kept up to {s['cut_after']}) beats the "
             f"baseline in {s['better']} and loses to it in {s['worse']} of {s['cells']} "
             f"(series, fraction) cells; its gain ranges from {s['lowest_gain']:+.3f} to "
             f"{s['highest_gain']:+.3f} (mean {s['mean_gain']:+.3f})."
             for _, s in scores.loc[picks].iterrows()]
    df = pd.DataFrame(gains)
    for name, group in df.groupby("series", sort=False):
        best = group[group["fraction"] == group["fraction"].min()].sort_values("gain").iloc[-1]
        interval = ("" if pd.isna(best["ci_low"]) else
                    f" (95% CI {best['ci_low']:+.3f} to {best['ci_high']:+.3f})")
        lines.append(f"{name}, fraction {best['fraction']:g} ({int(best['repeats'])} repeats): "
                     f"best {best['variant']} cut {best['cut']}, {best['test_accuracy']:.3f} vs "
                     f"baseline {best['baseline']:.3f}, gain {best['gain']:+.3f}{interval}.")
    return lines


def stopping_lines(runs: list[dict], config: SeriesConfig) -> list[str]:
    """How the stopping rule ended the trainings: the baselines' and the transferred
    settings' mean steps, and how many the maximum stopped (a capped baseline would still be
    under-trained)."""
    import pandas as pd

    df = pd.DataFrame(runs)
    lines = []
    for kind, part in (("baselines from scratch", df[df["variant"] == "baseline"]),
                       ("transferred settings", df[df["variant"] != "baseline"])):
        if len(part):
            lines.append(
                f"The {kind} trained {part['steps'].mean():.0f} steps on average (kept weights "
                f"of step {part['best_step'].mean():.0f}); {int(part['capped'].sum()):,} of "
                f"{len(part):,} trainings reached the maximum of {config.max_steps} steps still "
                "improving.")
    return lines


def ari_lines(rows: list[dict]) -> list[str]:
    """Per (network, data): the layer after which K-means separates the classes best."""
    import pandas as pd

    df = pd.DataFrame(rows)
    layer = df[df["unit"] == "layer"].groupby(["network", "data", "layer"], sort=False)["ari"]
    lines = []
    for (network, data_name), values in layer.mean().groupby(level=[0, 1], sort=False):
        values = values.droplevel([0, 1])
        lines.append(f"{network}, {data_name}: K-means separates the classes best after "
                     f"{values.idxmax()} (ARI {values.max():.3f}; input {values['input']:.3f}, "
                     f"output {values.iloc[-1]:.3f}).")
    return lines


def identical_lines(configs: list[SeriesConfig]) -> list[str]:
    """One sentence per setting left out as identical to another by construction."""
    found = {(s["variant"], s["cut"], s["same_as"], s["reason"])
             for config in configs for s in config.identical_settings()}
    return [f"**{variant} cut {cut}** is {same_as} cut {cut} by construction ({reason}): "
            "trained and reported once, as the latter." for variant, cut, same_as, reason
            in sorted(found)]


def findings_lines(study: dict, gains: list[dict], ari_rows: list[dict]) -> list[str]:
    """The notebook's findings, every number from the results: the best and the worst
    setting over all cells, the best setting at the smallest fraction per series, how the
    stopping rule ended the trainings, the settings identical by construction, and where
    K-means separates the classes best."""
    done = study["done"]
    return (_setting_lines(gains) + (stopping_lines(study["runs"], done[0]) if done else [])
            + identical_lines(done) + ari_lines(ari_rows))


def network_caption(network: CnnConfig) -> str:
    """The cut diagram's caption: the network's layers and sizes, from its config."""
    widths = ", ".join(str(w) for w in network.widths)
    dense = f"a dense layer of {network.hidden} units and " if network.dense_layers == 2 else ""
    return (f"_The CNN: {network.depth} convolution layers ({network.kernel_size}x"
            f"{network.kernel_size}, {widths} channels, {network.activation}, max-pooling "
            f"every {network.pool_every}), {dense}an output layer of {network.num_classes} "
            f"classes, on {network.in_channels}-channel {network.image_size}x"
            f"{network.image_size} images. A cut at k keeps layers 1..k._")


def runs_caption(study: dict) -> str:
    """What the series ran: runs, fractions, repeats and the stopping rule, from the configs."""
    if not study["done"]:
        return "_No series ran: " + " ".join(study["notes"]) + "_"
    config = study["done"][0]
    return (f"_{len(study['runs']):,} trainings over {len(study['done'])} series "
            f"({', '.join(c.name for c in study['done'])}). Each stops early on "
            f"{config.val_share:.0%} of the fine-tuning pool of {config.n_train or 'all'} images "
            f"held out for validation ({config.val_ratio:g} validation images per training "
            f"image, at least {MIN_VAL_PER_CLASS} per class; accuracy every "
            f"{config.eval_every} steps, patience "
            f"{config.patience} evaluations, at most {config.max_steps} steps); fractions are "
            "of the rest._")


# ---------------------------------------------------------------- against the published findings

def _transfer_evidence(gains: list[dict]) -> dict:
    """This run's numbers for Yosinski et al.'s three findings: for each, whether they point
    the paper's way, a sentence, and how many of its cells' intervals exclude zero that way
    (None where the evidence is a mean over settings, not intervals)."""
    import pandas as pd

    df = pd.DataFrame(gains)
    out = {}
    frozen = df[df["variant"].str.endswith("/frozen")]
    means = frozen.groupby("cut")["gain"].mean()
    if len(means) > 1:
        first, last = means.index.min(), means.index.max()
        top = frozen[frozen["cut"] == last]
        out["top"] = (means[last] < means[first],
                      f"frozen layers kept up to cut {first}: mean gain {means[first]:+.3f} "
                      f"over the baseline; up to cut {last} (the top): {means[last]:+.3f}, "
                      f"below zero in {int((top['ci_high'] < 0).sum())} of {len(top)} cells",
                      int((top["ci_high"] < 0).sum()))
    source = df["series"].str.split("->").str[0]
    same = source == df["series"].str.split("->").str[1]
    if same.any() and (~same).any():
        near, far = df[same]["gain"].mean(), df[~same]["gain"].mean()
        out["distance"] = (far < near,
                           f"mean gain {near:+.3f} within one data set, {far:+.3f} across data "
                           "sets (every setting, cut and fraction)", None)
    else:
        out["distance"] = (None, "not measured: this run's series all stay "
                                 f"{'within one data set' if same.all() else 'across data sets'}",
                           None)
    trained = df[df["variant"].str.endswith("/trainable")]
    if len(trained):
        full = trained[trained["fraction"] == trained["fraction"].max()]
        better = int((full["ci_low"] > 0).sum())
        out["fine-tuned"] = (full["gain"].mean() > 0,
                             f"trainable kept layers with all the fine-tuning data (fraction "
                             f"{full['fraction'].max():g}): mean gain {full['gain'].mean():+.3f}; "
                             f"interval above zero in {better} of {len(full)} (series, cut) "
                             "cells", better)
    return out


def _evidence_key(entry: dict) -> str | None:
    setting = entry.get("setting", "")
    for key, words in (("top", "bottom, middle or top"), ("distance", "distances"),
                       ("fine-tuned", "fine-tuned")):
        if words in setting:
            return key
    return None


def anchor_table(anchors: list[dict], gains: list[dict]):
    """The published findings of notebook 05 (``helpers.anchors.anchors_for``: findings in
    words, no number) with this run's evidence beside each (``anchors.finding_table``)."""
    return finding_table(anchors, _transfer_evidence(gains), _evidence_key,
                         "a small CNN on 28x28 grey images against the paper's ImageNet "
                         "network; our gains are over a baseline from scratch at equal "
                         "stopping rule")


# ---------------------------------------------------------------- conclusions

def conclusion_lines(study: dict, gains: list[dict]) -> list[str]:
    """What the notebook found, from its numbers: the setting that beats the baseline most
    often and the one that loses most often, how the stopping rule ended the baselines, and
    the settings identical by construction. (The comparison rows of
    ``conclusions.what_we_found`` are per test image; this study's gains are per repeat.)"""
    if not study["done"]:
        return ["Nothing ran: " + " ".join(study["notes"])]
    stopping = stopping_lines(study["runs"], study["done"][0])
    return _setting_lines(gains)[:2] + stopping[:1] + identical_lines(study["done"])


def limitations(study: dict, profile: str) -> list[str]:
    """The study's limits, from its configs: the network and data, one seed, the repeats,
    the validation split against the smallest training subsets, the series skipped, and
    what the full profile adds."""
    if not study["done"]:
        return [f"No series ran in the {profile} profile."]
    config = study["done"][0]
    runs = study["runs"]
    smallest = min(r["n_train"] for r in runs)
    pool = config.n_train or "all the"
    lines = [
        f"A small CNN ({config.network().depth} convolution layers) trained here on 28x28 grey "
        f"images, one seed ({config.seed}), {config.min_repeats}-{config.max_repeats} repeats "
        "per setting: the intervals are over repeats of this one pretrained network",
        f"Early stopping reads up to {config.val_share:.0%} of a pool of {pool} images held "
        f"out for validation ({min(r['n_val'] for r in runs)} images where the smallest "
        f"fraction trains on {smallest}): the comparison is at convergence, which a user with "
        "that few labelled images could not check",
        "The full profile runs the whole data sets, CIFAR-10 and all four variants with more "
        "repeats on a GPU"]
    return lines + study["notes"]
