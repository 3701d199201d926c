"""Ensembles of test-time adapted models: each member adapts on its own views and resets on
its own; the ensemble combines their predictions by one of four rules.

Rules (``combine``), over members m = 1..M with logits z_m and probabilities p_m:

- ``mean``: p = (1/M) sum_m p_m.
- ``temperature``: p = (1/M) sum_m softmax(z_m / T_m), with T_m fitted per member by
  minimising the negative log-likelihood (``fit_temperature``) on labelled **source** images
  (``helpers.ensemble_grid.held_out_set``: a training split, none of the test images), never
  on labelled test images, which test-time adaptation does not have.
- ``entropy``: p = sum_m w_m p_m with w_m = exp(-H(p_m)) / sum_k exp(-H(p_k)) per image:
  the more confident a member on this image, the more it weighs.
- ``vote``: each member votes for its arg-max; the class with most votes wins, ties go to
  the tied class with the highest mean probability. The reported distribution is
  (votes + mean probabilities) / (M + 1): its arg-max is exactly that rule (a vote
  outweighs any probability) and its confidence is close to the vote share.
"""

from __future__ import annotations

import math

import torch

from .base import Adapter
from .losses import entropy

RULES = ("mean", "temperature", "entropy", "vote")
# What an ensemble's recorded confidence is under each rule (the highest probability of the
# distribution ``combine`` returns).
RULE_CONFIDENCE = {
    "mean": "the highest of the members' averaged softmax probabilities",
    "temperature": "the highest of the members' averaged softmax probabilities, each member's "
                   "logits divided by its temperature fitted on labelled source images",
    "entropy": "the highest of the members' softmax probabilities averaged with weights "
               "exp(-entropy) per image",
    "vote": "the predicted class's (votes + members' mean probability) / (members + 1): close "
            "to the share of members voting for it",
}


def combine(logits: torch.Tensor, rule: str = "mean", temperatures=None) -> torch.Tensor:
    """Members' logits (M x N x C) to the ensemble's log-probabilities (N x C)."""
    logits = logits.float()
    m = logits.shape[0]
    if rule == "temperature":
        temps = torch.as_tensor(temperatures if temperatures is not None else [1.0] * m,
                                dtype=logits.dtype, device=logits.device)
        if temps.shape != (m,):
            raise ValueError(f"{m} members but {len(temps)} temperatures: fit them with "
                             "ensemble_grid.fit_temperatures(ensemble, held_out) or pass one "
                             "per member.")
        logits = logits / temps.view(m, 1, 1)
    log_probs = logits.log_softmax(-1)
    if rule in ("mean", "temperature"):
        return torch.logsumexp(log_probs, 0) - math.log(m)
    if rule == "entropy":
        log_weights = (-entropy(logits)).log_softmax(0)  # M x N
        return torch.logsumexp(log_probs + log_weights[..., None], 0)
    if rule == "vote":
        votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0)
        score = votes + log_probs.exp().mean(0)
        return (score / (m + 1)).log()
    raise ValueError(f"rule must be one of {RULES}, not {rule!r}")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out labels
    (Guo et al., 2017), optimised over log T so that T stays positive. T is kept within
    [1/100, 100]: a member no better than chance on the held-out part would otherwise get an
    unbounded T (its prediction flattened to uniform, which 100 already nearly is)."""
    logits, labels = logits.detach().float(), torch.as_tensor(labels).to(logits.device)
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(-math.log(100), math.log(100)).exp())


class Ensemble(Adapter):
    """Members (a dict name -> adapter, or a list) with the common interface; ``rule`` as in
    the module. The members must predict the same classes (same ``class_names``)."""

    name = "ensemble"

    def __init__(self, members, rule: str = "mean", temperatures=None, seed: int = 0):
        members = dict(members) if isinstance(members, dict) else {
            f"{m.name}{i}": m for i, m in enumerate(members)}
        if len(members) < 1:
            raise ValueError("An ensemble needs at least one member.")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        classes = {tuple(getattr(m.model, "class_names", ()) or ()) for m in members.values()}
        if len({c for c in classes if c}) > 1:
            raise ValueError("The members predict different classes: build every member "
                             "over the task's class names (in the same order).")
        super().__init__(next(iter(members.values())).model, seed)
        self.members, self.rule = members, rule
        self.temperatures = list(temperatures) if temperatures is not None else None

    @property
    def confidence(self) -> str:
        return RULE_CONFIDENCE[self.rule]

    def forward(self, images, keys):
        logits = torch.stack([m(images, keys).float() for m in self.members.values()])
        return combine(logits, self.rule, self.temperatures)

    def reset(self):
        super().reset()
        for member in self.members.values():
            member.reset()

    def config(self):
        return {"method": self.name, "rule": self.rule, "temperatures": self.temperatures,
                "members": {name: m.config() for name, m in self.members.items()}}


def disagreement(results: list[dict], members) -> dict:
    """Where the members disagree: how often, and the accuracy of each member, of the best
    member per image (an oracle) and of every ensemble rule on the images where they agree
    and where they do not. ``results`` as from ``ensemble_results`` for one data set."""
    by_method = {r["method"]: r for r in results}
    labels = torch.tensor(results[0]["labels"])
    preds = {name: torch.tensor(r["predictions"]) for name, r in by_method.items()}
    member_preds = torch.stack([preds[m] for m in members])
    agree = (member_preds == member_preds[0]).all(0)
    row = {"n": len(labels), "disagree": float((~agree).float().mean())}
    for part, mask in (("agree", agree), ("disagree", ~agree)):
        for name, p in preds.items():
            row[f"{name} ({part})"] = (float((p[mask] == labels[mask]).float().mean())
                                       if mask.any() else None)
        oracle = (member_preds[:, mask] == labels[mask]).any(0)
        row[f"any member right ({part})"] = float(oracle.float().mean()) if mask.any() else None
    return row
