"""How well each layer's activations separate the classes, without training anything.

For a network and labelled images: the activations after every layer (the input and the
output logits included), K-means with as many clusters as classes, and the Adjusted Rand Index
of the clusters against the labels (0: chance, 1: the classes exactly), on the whole layer and
on each channel of a convolution layer alone, over several random subsets. Comparing the
pretraining data with the fine-tuning data shows where the pretrained features stop being
general.
"""

from __future__ import annotations

import warnings

import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score


@torch.no_grad()
def layer_activations(net, images: torch.Tensor, names) -> dict:
    """``{"input": images, name_k: output of layer k}`` for a sequential network."""
    out, x = {"input": images}, images
    for name, layer in zip(names, net):
        x = layer(x)
        out[name] = x
    return out


def kmeans_ari(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """ARI of K-means (k = number of classes) on the flattened features against the labels."""
    k = len(labels.unique())
    with warnings.catch_warnings():  # a dead channel (all zeros) is one cluster: ARI 0, fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        found = KMeans(k, n_init=3, random_state=seed).fit_predict(
            features.flatten(1).double().numpy())
    return float(adjusted_rand_score(labels.numpy(), found))


def clustering_ari(net, images, labels, names, n_samples: int = 500, n_subsets: int = 3,
                   per_channel: bool = True, seed: int = 0) -> list[dict]:
    """Rows ``{layer, depth, subset, unit, ari}``: ``unit`` is "layer" (all activations),
    "channel mean" or "channel best" (over the channels of a convolution layer, each
    clustered alone), one row per random subset of ``n_samples`` images."""
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for subset in range(n_subsets):
        pick = torch.randperm(len(labels), generator=generator)[:n_samples]
        y = labels[pick]
        for depth, (layer, act) in enumerate(layer_activations(net, images[pick],
                                                               names).items()):
            rows.append({"layer": layer, "depth": depth, "subset": subset, "unit": "layer",
                         "ari": kmeans_ari(act, y, seed + subset)})
            if per_channel and act.dim() == 4 and layer != "input":
                scores = [kmeans_ari(act[:, c], y, seed + subset) for c in range(act.shape[1])]
                rows += [{"layer": layer, "depth": depth, "subset": subset, "unit": unit,
                          "ari": value} for unit, value in (("channel mean", sum(scores)
                                                             / len(scores)),
                                                            ("channel best", max(scores)))]
    return rows
