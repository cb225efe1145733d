"""Preference objectives: `objective: dpo | orpo | simpo` on pairs, `kto` on labelled rows.

They plug into the shared loop (`tunesmith.train.run`) like SFT does (see `objective.py`). What
they add is the reference model of DPO and KTO:

- LoRA / QLoRA from the base: the base itself, i.e. the same model with the adapter disabled
  (peft's `disable_adapter()`), so no second copy is held in memory;
- `init_from: RUN_DIR` (an earlier LoRA run, usually SFT) or full fine-tuning: the model as it
  is before the first step. Its log-probabilities are computed in one pass before training,
  stored as `reference_logps.safetensors` in the run directory and read back on resume, so a
  resumed run uses the same reference as the interrupted one.

ORPO and SimPO have no reference. Losses are divided by the number of examples of the whole
optimiser step (ORPO's NLL by the chosen tokens of the step), so accumulation equals one large
batch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train import losses as L
from tunesmith.train.logprobs import sequence_logps
from tunesmith.train.pairs import PreferencePlan, preference_eval_batches, tokenize_preference_rows
from tunesmith.train.sharding import unwrap

REFERENCE_FILE = "reference_logps.safetensors"


def for_config(cfg: TrainConfig):
    if cfg.objective == "kto":
        return KTOObjective(cfg)
    return PairObjective(cfg)


class _PreferenceBase:
    kind = "pairs"
    val_key = "loss"
    uses_reference = True

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.name = cfg.objective
        self.settings = cfg.train
        self.beta = L.resolve_beta(cfg.objective, cfg.preference.beta)
        self.tokenizer = None
        self.model = None
        self.reference: dict[str, torch.Tensor] | None = None  # precomputed, by split
        self.precomputed = self.uses_reference and (cfg.method == "full" or cfg.init_from is not None)
        self._reference_path: Path | None = None

    # -- data

    def tokenize(self, rows, tokenizer, split: str):
        self.tokenizer = tokenizer
        return tokenize_preference_rows(rows, tokenizer, self.settings, split, self.kind)

    def batch_plan(self, data, dist, pad_id: int, flatten: bool):
        return PreferencePlan(data, self.settings, dist, pad_id, tokenizer=self.tokenizer)

    def eval_batches(self, data, dist, pad_id: int, flatten: bool):
        return preference_eval_batches(data, self.settings, dist, pad_id, tokenizer=self.tokenizer)

    # -- model

    def before_training(self, r) -> None:
        if r.sharding.name in ("fsdp", "deepspeed_zero3"):
            raise TrainingError(
                f"objective: {self.name} does not run under train.distributed: {r.sharding.name} yet",
                hint="use train.distributed: ddp (several processes each holding the model) or one process")
        self.model = r.model
        if not self.precomputed:
            return
        self._reference_path = r.out / REFERENCE_FILE
        if r.resumed:
            if not self._reference_path.is_file():
                raise TrainingError(f"{self._reference_path} is missing; the run's reference cannot be restored",
                                    hint="start the run again without --resume")
            from safetensors.torch import load_file

            self.reference = load_file(str(self._reference_path))
            r.say(f"reference log-probabilities read from {self._reference_path}")
            return
        r.say("reference: computing the log-probabilities of the starting model (one pass)")
        self.reference = self._compute_reference(r)
        if r.dist.is_main:
            from safetensors.torch import save_file

            tmp = self._reference_path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in self.reference.items()}, str(tmp))
            os.replace(tmp, self._reference_path)
        r.dist.barrier()

    def outputs(self, r) -> list[Path]:
        return [self._reference_path] if self._reference_path is not None else []

    @torch.no_grad()
    def _reference_logps(self, inputs) -> torch.Tensor:
        """The reference's sequence log-probabilities of a batch's rows: the model with its
        adapter disabled, in eval mode (no dropout)."""
        inner = unwrap(self.model)
        was_training = inner.training
        inner.eval()
        try:
            with inner.disable_adapter() if hasattr(inner, "disable_adapter") else contextlib.nullcontext():
                logps, _ = sequence_logps(inner, inputs)
        finally:
            inner.train(was_training)
        return logps.detach()

    @torch.no_grad()
    def _policy_logps_eval(self, inputs) -> torch.Tensor:
        inner = unwrap(self.model)
        was_training = inner.training
        inner.eval()
        try:
            logps, _ = sequence_logps(inner, inputs)
        finally:
            inner.train(was_training)
        return logps.detach()


class PairObjective(_PreferenceBase):
    """dpo, orpo, simpo."""

    def __init__(self, cfg: TrainConfig):
        self.uses_reference = cfg.objective == "dpo"
        super().__init__(cfg)
        self.loss_type = cfg.preference.loss_type
        if cfg.objective != "dpo" and cfg.preference.loss_type != "sigmoid":
            raise TrainingError(f"preference.loss_type applies to objective: dpo, not {cfg.objective}",
                                hint="remove preference.loss_type, or set objective: dpo")

    def _compute_reference(self, r) -> dict[str, torch.Tensor]:
        from tunesmith.train.pairs import make_pair_batch

        tables = {}
        # Only the training pairs the run's steps will use (the plan is fixed in advance), so a
        # short run does not pay for a pass over the whole data set; unused rows stay 0.
        used = {e["index"] for step in range(r.plan.total_steps) for e in r.plan.step_examples(step)}
        for split, data in (("train", r.plan.data), ("validation", r.val_set)):
            if data is None:
                continue
            table = torch.zeros(len(r.data.train_rows if split == "train" else r.data.val_rows), 2,
                                dtype=torch.float64)
            examples = [e for e in data.examples if split != "train" or e["index"] in used]
            size = self.settings.micro_batch_size
            for i in range(0, len(examples), size):
                chunk = examples[i:i + size]
                batch = make_pair_batch(chunk, r.plan.pad_id)
                logps = self._policy_logps_eval(batch.model_inputs(r.dist.device)).double().cpu()
                n = len(chunk)
                for j, e in enumerate(chunk):
                    table[e["index"], 0], table[e["index"], 1] = logps[j], logps[n + j]
            tables[split] = table
        return tables

    def normalisers(self, batches) -> dict[str, float]:
        chosen_tokens = 0
        for b in batches:
            n = b.num_examples
            chosen_tokens += int((b.tensors["labels"][:n, 1:] != -100).sum())
        return {"pairs": float(sum(b.num_examples for b in batches)),
                "tokens": float(sum(b.num_trained_tokens for b in batches)),
                "chosen_tokens": float(chosen_tokens)}

    def _reference_for(self, batch, inputs, device) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch.num_examples
        if self.precomputed:
            table = self.reference[batch.split]
            ref = table[torch.tensor(batch.indices)].to(device=device, dtype=torch.float32)
            return ref[:, 0], ref[:, 1]
        logps = self._reference_logps(inputs)
        return logps[:n], logps[n:]

    def loss(self, model, batch, norms: dict[str, float], device: str):
        inputs = batch.model_inputs(device)
        logps, counts = sequence_logps(model, inputs)
        n = batch.num_examples
        pc, pr, cc, cr = logps[:n], logps[n:], counts[:n], counts[n:]
        pairs = max(norms["pairs"], 1.0)
        stats: dict[str, float] = {}
        if self.name == "dpo":
            rc, rr = self._reference_for(batch, inputs, device)
            per_pair, chosen_rewards, rejected_rewards = L.dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, cc, cr)
            loss = per_pair.sum() / pairs
        elif self.name == "orpo":
            mean_c, mean_r = pc / cc.clamp(min=1), pr / cr.clamp(min=1)
            odds, chosen_rewards, rejected_rewards = L.orpo_odds_term(mean_c, mean_r, self.beta)
            nll_sum = -pc.sum()
            loss = nll_sum / max(norms["chosen_tokens"], 1.0) - odds.sum() / pairs
            per_pair = -odds
            stats["nll"] = float(nll_sum.item())
        else:  # simpo
            mean_c, mean_r = pc / cc.clamp(min=1), pr / cr.clamp(min=1)
            per_pair, chosen_rewards, rejected_rewards = L.simpo_loss(mean_c, mean_r, self.beta,
                                                                      self.cfg.preference.simpo_gamma)
            loss = per_pair.sum() / pairs
        stats.update(_reward_stats(per_pair, chosen_rewards, rejected_rewards, pc, pr))
        return loss, stats

    def summarise(self, sums: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        pairs = max(norms.get("pairs", 0.0), 1.0)
        figures = {"loss": sums.get("pair_loss", 0.0) / pairs}
        if "nll" in sums:
            nll = sums["nll"] / max(norms.get("chosen_tokens", 0.0), 1.0)
            figures["loss"] += nll
            figures["nll_loss"] = nll
        figures.update(_reward_figures(sums, pairs))
        return figures


class KTOObjective(_PreferenceBase):
    kind = "kto"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        if cfg.method == "full" or cfg.init_from is not None:
            raise TrainingError(
                "objective: kto needs the reference's log-probabilities of each step's mismatched pairs, "
                "which tunesmith computes with the adapter disabled: it supports method: lora or qlora "
                "from the base model only",
                hint="use method: lora (without init_from), or objective: dpo with pairs")
        self.pref = cfg.preference

    def normalisers(self, batches) -> dict[str, float]:
        """Examples and tokens, and the step's KL estimate z (summed here, all-reduced by the
        loop): one no-grad pass over the mismatched pairs of every micro-batch, policy minus
        reference, so z is the same whether the step is one batch or accumulated."""
        norms = {"examples": float(sum(b.num_examples for b in batches)),
                 "tokens": float(sum(b.num_trained_tokens for b in batches)), "kl_sum": 0.0, "kl_count": 0.0}
        if self.model is None:
            return norms
        for b in batches:
            if b.kl_tensors is None:
                continue
            device = next(unwrap(self.model).parameters()).device
            inputs = {k: v.to(device) for k, v in b.kl_tensors.items()}
            with torch.no_grad():
                policy, _ = sequence_logps(self.model, inputs)
            ref = self._reference_logps(inputs)
            norms["kl_sum"] += float((policy - ref).sum().item())
            norms["kl_count"] += float(policy.numel())
        return norms

    def loss(self, model, batch, norms: dict[str, float], device: str):
        inputs = batch.model_inputs(device)
        logps, _ = sequence_logps(model, inputs)
        ref = self._reference_logps(inputs)
        kl = max(norms["kl_sum"] / norms["kl_count"], 0.0) if norms.get("kl_count") else 0.0
        desirable = batch.labels_desirable.to(device)
        per_example, rewards = L.kto_loss(logps, ref, desirable, torch.tensor(kl, device=device), self.beta,
                                          self.pref.desirable_weight, self.pref.undesirable_weight)
        loss = per_example.sum() / max(norms["examples"], 1.0)
        d = desirable
        stats = {"example_loss": float(per_example.detach().sum().item()),
                 "chosen_count": float(d.sum().item()), "rejected_count": float((~d).sum().item()),
                 "rewards/chosen": float(rewards[d].sum().item()), "rewards/rejected": float(rewards[~d].sum().item()),
                 "logps/chosen": float(logps[d].detach().sum().item()),
                 "logps/rejected": float(logps[~d].detach().sum().item()), "kl": kl * batch.num_examples}
        return loss, stats

    def summarise(self, sums: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        examples = max(norms.get("examples", 0.0), 1.0)
        nc, nr = sums.get("chosen_count", 0.0), sums.get("rejected_count", 0.0)
        figures = {"loss": sums.get("example_loss", 0.0) / examples, "kl": sums.get("kl", 0.0) / examples}
        if nc:
            figures["rewards/chosen"] = sums["rewards/chosen"] / nc
            figures["logps/chosen"] = sums["logps/chosen"] / nc
        if nr:
            figures["rewards/rejected"] = sums["rewards/rejected"] / nr
            figures["logps/rejected"] = sums["logps/rejected"] / nr
        if nc and nr:
            figures["rewards/margins"] = figures["rewards/chosen"] - figures["rewards/rejected"]
        return figures


def _reward_stats(per_pair, chosen_rewards, rejected_rewards, pc, pr) -> dict[str, float]:
    return {"pair_loss": float(per_pair.detach().sum().item()),
            "rewards/chosen": float(chosen_rewards.sum().item()),
            "rewards/rejected": float(rejected_rewards.sum().item()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().sum().item()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).sum().item()),
            "logps/chosen": float(pc.detach().sum().item()), "logps/rejected": float(pr.detach().sum().item())}


def _reward_figures(sums: dict[str, float], pairs: float) -> dict[str, float]:
    keys = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected")
    return {k: sums.get(k, 0.0) / pairs for k in keys}
