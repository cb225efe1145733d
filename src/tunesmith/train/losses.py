"""Preference losses on sequence log-probabilities, one value per example.

Every function takes the summed (or, where the method says so, length-averaged) log-probability
of each completion under the policy, and the reference's where the method has one, and returns
`(losses, chosen_rewards, rejected_rewards)` per example. The training loop sums the losses and
divides by the number of examples of the whole optimiser step, so accumulation equals one
large batch. Each formula is the one TRL 1.16 implements (tests/unit/train/test_train_losses.py
calls TRL's own code on the same batch):

- DPO (Rafailov et al. 2023), `loss_type` sigmoid: -log σ(β·Δ), Δ = (log π(y_w) - log π_ref(y_w))
  - (log π(y_l) - log π_ref(y_l)); hinge (SLiC): max(0, 1 - β·Δ); IPO (Azar et al. 2023):
  (Δ' - 1/(2β))², with each log-ratio divided by its completion's token count (as TRL does,
  confirmed with the IPO authors). Rewards β·(log π - log π_ref).
- ORPO (Hong et al. 2024): NLL of the chosen completion - β·log σ(log odds(ȳ_w) - log odds(ȳ_l)),
  ȳ the per-token mean log-probability; no reference. Rewards β·ȳ.
- SimPO (Meng et al. 2024): -log σ(β·(ȳ_w - ȳ_l) - γ); no reference. Rewards β·ȳ.
- KTO (Ethayarajh et al. 2024): desirable 1 - σ(β·(r - z)), undesirable 1 - σ(β·(z - r)),
  r = log π(y) - log π_ref(y), z the batch's KL estimate (detached, at least 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.errors import TrainingError

#: defaults from the papers and TRL's configs (DPOConfig, ORPOConfig, CPOConfig for SimPO, KTOConfig)
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}


def resolve_beta(objective: str, beta: float | None) -> float:
    """The configured beta, or the objective's default; refuses a beta that makes the loss constant."""
    value = DEFAULT_BETA[objective] if beta is None else float(beta)
    if not value > 0:
        constant = {"dpo": "log 2 (sigmoid) or 1 (hinge) whatever the model does, and IPO divides by it",
                    "orpo": "the NLL of the chosen answer alone, which is SFT",
                    "simpo": "a constant: β multiplies the only term that depends on the model",
                    "kto": "0.5 per example whatever the model does"}[objective]
        raise TrainingError(
            f"preference.beta is {value}; with beta <= 0 the {objective} loss is {constant}",
            hint=f"use a positive beta (default {DEFAULT_BETA[objective]}), or objective: sft")
    return value


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None):
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the completions' token counts")
        ipo_delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_term(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float):
    """β·log σ(log odds ratio) per pair (subtracted from the NLL), and the rewards."""
    mean_chosen, mean_rejected = mean_chosen.float(), mean_rejected.float()
    log_odds = (mean_chosen - mean_rejected) - (log1mexp(mean_chosen) - log1mexp(mean_rejected))
    return beta * F.logsigmoid(log_odds), beta * mean_chosen.detach(), beta * mean_rejected.detach()


def simpo_loss(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float, gamma: float):
    losses = -F.logsigmoid(beta * (mean_chosen - mean_rejected) - gamma)
    return losses, beta * mean_chosen.detach(), beta * mean_rejected.detach()


def kto_loss(policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Per-example KTO losses (weighted) and rewards; `desirable` is the boolean label."""
    logratios = policy - reference
    kl = kl.detach()
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))))
    return losses, beta * logratios.detach()
