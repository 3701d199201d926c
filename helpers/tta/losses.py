"""The entropy objectives the methods share, in a module of their own so that a change to one
method's code does not mark another's cached results stale (``helpers.fingerprint``)."""

from __future__ import annotations

import math

import torch


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of softmax(logits) over views (dim 0), in log space: the mean of
    probabilities is a logsumexp of log-probabilities, so near one-hot and float16-range
    logits neither underflow nor overflow. Computed in float32 at least."""
    log_probs = logits.float().log_softmax(-1)
    log_marginal = torch.logsumexp(log_probs, 0) - math.log(logits.shape[0])
    terms = log_marginal.exp() * log_marginal
    return -torch.where(torch.isneginf(log_marginal), 0.0, terms).sum()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row."""
    log_probs = logits.float().log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum(-1)
