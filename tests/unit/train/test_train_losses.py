"""Each preference loss and its gradient equals TRL 1.16's implementation on the same batch.

TRL is the reference here, not a runtime dependency: its DPO and KTO losses are computed by
`DPOTrainer._compute_loss` / `KTOTrainer._compute_loss` themselves (called on a stand-in for the
trainer that carries just the settings they read, with TRL's fused LM head patched onto the
model), ORPO's odds-ratio term by `ORPOTrainer.odds_ratio_loss` and SimPO by
`CPOTrainer.cpo_loss` with `loss_type="simpo"`, fed by TRL's own `get_batch_logps`.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tunesmith.data.preference_demo import preference_pairs
from tunesmith.train import losses as L
from tunesmith.train.logprobs import sequence_logps
from tunesmith.train.pairs import kl_features, make_kto_batch, make_pair_batch, tokenize_completion

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

trl = pytest.importorskip("trl")
TOL = 1e-5


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), unwrap_model=lambda m: m, gather=lambda t: t,
                           gather_for_metrics=lambda t: t, autocast=contextlib.nullcontext)


def _rows(n: int = 6):
    import json

    lines = (REPO / "examples/data/tickets/train.jsonl").read_text().splitlines()[:n]
    return preference_pairs([json.loads(line) for line in lines], seed=3)


@pytest.fixture(scope="module")
def setup(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = []
    for i, row in enumerate(_rows()):
        chosen = tokenize_completion(tokenizer, row["prompt"], row["chosen"], 512)
        rejected = tokenize_completion(tokenizer, row["prompt"], row["rejected"], 512)
        examples.append({"chosen": chosen, "rejected": rejected, "index": i})
    return tokenizer, examples


def _model(tiny_model):
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.train()
    return model


def _near(model, tensors, seed: int, spread: float = 20.0) -> torch.Tensor:
    """Reference log-probabilities within a few nats of the model's own, so that the losses
    are far from saturation and the gradients are not vanishingly small."""
    with torch.no_grad():
        logps, _ = sequence_logps(model, dict(tensors))
    gen = torch.Generator().manual_seed(seed)
    return logps + (torch.rand(logps.shape, generator=gen) - 0.5) * spread


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_close(ours_loss, trl_loss, ours_grads, trl_grads):
    assert abs(ours_loss.item() - trl_loss.item()) <= TOL, (ours_loss.item(), trl_loss.item())
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    # guard: the gradients are not vanishing, so agreeing on them means something
    assert max(g.abs().max().item() for g in ours_grads.values()) > 1e-3
    for name in ours_grads:
        diff = (ours_grads[name] - trl_grads[name]).abs().max().item()
        assert diff <= TOL, (name, diff)


def _trl_pair_inputs(batch):
    t = batch.tensors
    return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"],
            "completion_mask": (t["labels"] != -100).long()}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl(setup, tiny_model, loss_type):
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    tokenizer, examples = setup
    batch = make_pair_batch(examples, tokenizer.pad_token_id)
    n = batch.num_examples
    beta = 0.1 if loss_type != "ipo" else 0.5

    model = _model(tiny_model)
    ref = _near(model, batch.tensors, seed=1)
    logps, counts = sequence_logps(model, dict(batch.tensors))
    losses, _, _ = L.dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta, loss_type, counts[:n], counts[n:])
    ours = losses.mean()
    ours.backward()
    ours_grads = _grads(model)

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    fake = SimpleNamespace(
        model=model, accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
        label_smoothing=0.0, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None), ref_model=None)
    inputs = {**_trl_pair_inputs(batch), "ref_chosen_logps": ref[:n], "ref_rejected_logps": ref[n:]}
    theirs = DPOTrainer._compute_loss(fake, model, inputs, False)
    theirs.backward()
    _assert_close(ours, theirs, ours_grads, _grads(model))
    # the logged figures are TRL's too
    chosen_rewards = beta * (logps[:n] - ref[:n]).detach()
    assert fake._metrics["train"]["rewards/chosen"][0] == pytest.approx(chosen_rewards.mean().item(), abs=TOL)


def _trl_logps_and_model(tiny_model, batch, average: bool):
    """TRL's get_batch_logps on the full logits of our padded batch (chosen rows, then rejected)."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    model = _model(tiny_model)
    logits = model(input_ids=batch.tensors["input_ids"], attention_mask=batch.tensors["attention_mask"]).logits
    all_logps = ORPOTrainer.get_batch_logps(logits, batch.tensors["labels"], average_log_prob=average)
    return model, all_logps


def test_orpo_matches_trl(setup, tiny_model):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    tokenizer, examples = setup
    batch = make_pair_batch(examples, tokenizer.pad_token_id)
    n, beta = batch.num_examples, 0.1

    model = _model(tiny_model)
    logps, counts = sequence_logps(model, dict(batch.tensors))
    odds, _, _ = L.orpo_odds_term(logps[:n] / counts[:n], logps[n:] / counts[n:], beta)
    nll = -logps[:n].sum() / counts[:n].sum()
    ours = nll - odds.mean()
    ours.backward()
    ours_grads = _grads(model)

    model, all_logps = _trl_logps_and_model(tiny_model, batch, average=True)
    fake = SimpleNamespace(beta=beta, accelerator=_accelerator())
    losses, *_ = ORPOTrainer.odds_ratio_loss(fake, all_logps[:n], all_logps[n:])
    # The NLL term is on the chosen completion's tokens, as in the ORPO paper (TRL's experimental
    # trainer also counts the prompt's tokens there); it is the same token-mean cross-entropy.
    logits = model(input_ids=batch.tensors["input_ids"], attention_mask=batch.tensors["attention_mask"]).logits
    labels = batch.tensors["labels"][:n]
    trl_nll = torch.nn.functional.cross_entropy(logits[:n, :-1].reshape(-1, logits.shape[-1]),
                                                labels[:, 1:].reshape(-1), ignore_index=-100)
    theirs = trl_nll - losses.mean()
    theirs.backward()
    _assert_close(ours, theirs, ours_grads, _grads(model))


def test_simpo_matches_trl(setup, tiny_model):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    tokenizer, examples = setup
    batch = make_pair_batch(examples, tokenizer.pad_token_id)
    n, beta, gamma = batch.num_examples, 2.0, 0.5

    model = _model(tiny_model)
    logps, counts = sequence_logps(model, dict(batch.tensors))
    losses, _, _ = L.simpo_loss(logps[:n] / counts[:n], logps[n:] / counts[n:], beta, gamma)
    ours = losses.mean()
    ours.backward()
    ours_grads = _grads(model)

    model, all_logps = _trl_logps_and_model(tiny_model, batch, average=True)
    fake = SimpleNamespace(beta=beta, alpha=0.0, loss_type="simpo", simpo_gamma=gamma, label_smoothing=0.0,
                           accelerator=_accelerator())
    trl_losses, *_ = CPOTrainer.cpo_loss(fake, all_logps[:n], all_logps[n:])
    theirs = trl_losses.mean()  # SimPO is CPO with cpo_alpha = 0: no NLL term
    theirs.backward()
    _assert_close(ours, theirs, ours_grads, _grads(model))


def test_kto_matches_trl(setup, tiny_model):
    from trl.trainer.kto_trainer import KTOTrainer
    from trl.trainer.utils import add_fused_lm_head

    tokenizer, _ = setup
    rows = _rows(6)
    rng = random.Random(0)
    examples = []
    for i, row in enumerate(rows):
        label = i % 3 != 0
        completion = row["chosen"] if label else row["rejected"]
        tok = tokenize_completion(tokenizer, row["prompt"], completion, 512)
        examples.append({"completion": tok, "prompt": row["prompt"], "completion_messages": completion,
                         "label": label, "index": i})
    rng.shuffle(examples)
    kl = kl_features(examples, tokenizer, 512)
    batch = make_kto_batch(examples, kl, tokenizer.pad_token_id)
    beta, dw, uw = 0.1, 1.0, 1.33

    model = _model(tiny_model)
    ref, ref_kl = _near(model, batch.tensors, seed=2), _near(model, batch.kl_tensors, seed=3)
    with torch.no_grad():
        kl_logps, _ = sequence_logps(model, dict(batch.kl_tensors))
    z = (kl_logps - ref_kl).mean().clamp(min=0)
    logps, _ = sequence_logps(model, dict(batch.tensors))
    losses, _ = L.kto_loss(logps, ref, batch.labels_desirable, z, beta, dw, uw)
    ours = losses.mean()
    ours.backward()
    ours_grads = _grads(model)

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    fake = SimpleNamespace(
        model=model, accelerator=_accelerator(), aux_loss_enabled=False, precompute_ref_logps=True,
        calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=dw, undesirable_weight=uw,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None), ref_model=None)
    fake._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(fake, m, b)
    t, k = batch.tensors, batch.kl_tensors
    inputs = {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"],
              "completion_mask": (t["labels"] != -100).long(), "KL_input_ids": k["input_ids"],
              "KL_attention_mask": k["attention_mask"], "KL_completion_mask": (k["labels"] != -100).long(),
              "label": batch.labels_desirable.long(), "ref_logps": ref, "ref_KL_logps": ref_kl}
    theirs = KTOTrainer._compute_loss(fake, model, inputs, False)
    theirs.backward()
    assert fake._metrics["train"]["kl"][0] == pytest.approx(float(z), abs=TOL)
    _assert_close(ours, theirs, ours_grads, _grads(model))


def test_beta_that_makes_the_loss_constant_is_refused():
    from tunesmith.errors import TrainingError

    for objective in ("dpo", "orpo", "simpo", "kto"):
        with pytest.raises(TrainingError, match="beta is 0"):
            L.resolve_beta(objective, 0)
    assert L.resolve_beta("dpo", None) == 0.1 and L.resolve_beta("simpo", None) == 2.0
