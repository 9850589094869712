"""The objectives of preference learning, written out: Bradley-Terry (reward models), DPO and IPO
(preference tuning against a reference), and RLOO (REINFORCE with a leave-one-out baseline).

Every function returns per-pair (or per-sample) values; the task sums them into ``loss_sum`` and
counts the pairs (or samples) as ``num_items``, so micro-batches and processes weigh every pair
the same (core/loop/trainer.py's loss contract).

>>> import torch
>>> round(float(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]))[0]), 4)  # log 2
0.6931
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected) per pair: the negative log-likelihood that the chosen
    response wins under the Bradley-Terry model with scalar rewards ``chosen`` and ``rejected``."""
    return -F.logsigmoid(chosen - rejected)


def dpo_logits(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor) -> torch.Tensor:
    """(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) per pair, from summed
    response log-probabilities."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) per pair: -log sigmoid(beta * dpo_logits)."""
    return -F.logsigmoid(beta * dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023) per pair: (dpo_logits - 1 / (2 beta))^2. It regresses the log-ratio
    margin to a finite target instead of pushing it to infinity, so it does not overfit
    deterministic preferences. Here the log-probabilities are summed over response tokens, as in
    the paper's definition of the policy's probability of a response."""
    return (dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected) - 1.0 / (2.0 * beta)) ** 2


def implicit_rewards(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward of a response: beta * (log pi - log ref)."""
    return beta * (policy - ref)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages for rewards of shape (prompts, k): each sample's reward minus the
    mean reward of the other k - 1 samples of its prompt (Ahmadian et al. 2024, RLOO). Equals
    k / (k - 1) * (r_i - mean_j r_j)."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (finetune.k >= 2)")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def rloo_loss(policy_logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE per sample: -advantage * log pi(response) (the advantage is a constant)."""
    return -advantages.detach() * policy_logps


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of the tokens where ``mask`` is 1: ``logits`` (batch, T, vocab) of a
    causal LM over the whole sequence, ``labels`` (batch, T) the sequence itself; token t is
    predicted by position t - 1."""
    logits, labels, mask = logits[:, :-1].float(), labels[:, 1:], mask[:, 1:].float()
    # log p(label) = logit of the label - logsumexp over the vocabulary (no full log-softmax kept).
    picked = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = picked - logits.logsumexp(-1)
    return (per_token * mask).sum(-1)
