"""The merge parity check passes a correct merge whatever the logits' scale, and fails broken ones:
a layer left unmerged, a decoder layer dropped, a wrong LoRA scaling, the wrong adapter."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tuned_helpers as helpers

from tunesmith.export.config import MergeConfig  # noqa: E402
from tunesmith.errors import ExportError  # noqa: E402
from tunesmith.export import merge  # noqa: E402
from tunesmith.models.source import load_source, resolve_source  # noqa: E402


@pytest.fixture(scope="module")
def adapter_model():
    with helpers.one_thread():
        model, tokenizer = load_source(resolve_source(str(helpers.lora_run())), device="cpu")
        ids, mask = merge.probe_batch(tokenizer)
        reference = merge.probe_logits(model, ids, mask)
    return model, ids, mask, reference


def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


def _merged_logits(model, ids, mask, breaker=None):
    """Merge a copy of `model`, first applying `breaker` to the copy (before merging) when given."""
    copy_ = copy.deepcopy(model)
    if breaker is not None:
        copy_ = breaker(copy_) or copy_
    with helpers.one_thread():
        return merge.probe_logits(merge.fold_adapter(copy_).eval(), ids, mask)


def _check(reference, logits):
    return merge.check_merge_parity(reference, logits, torch.float32, say=lambda *_: None)


def test_a_correct_merge_passes_with_all_figures(adapter_model):
    model, ids, mask, reference = adapter_model
    parity = _check(reference, _merged_logits(model, ids, mask))
    assert parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert parity["top1_agreement"] == 1.0 and parity["top1_flips"] == 0
    assert parity["tolerance"] == pytest.approx(merge.FP32_RELATIVE_TOLERANCE * max(1.0, parity["max_abs_logit"]))


def test_tolerance_scales_with_the_logits():
    # A real model's logits are tens of units: the same relative rounding a 4M model shows at
    # 1e-6 appears at 1e-4 there, and must still pass.
    torch.manual_seed(0)
    reference = torch.randn(40, 500) * 30
    rounding = reference * (1 + 3e-6 * torch.randn_like(reference))
    parity = _check(reference, rounding)
    assert parity["max_abs_logit_diff"] > 1e-4  # the old absolute 1e-4 would have failed this
    assert parity["tolerance"] >= 1e-3


def test_near_tie_may_flip_but_a_clear_winner_may_not():
    reference = torch.zeros(2, 4)
    reference[0, :2] = torch.tensor([5.0, 5.0 - 1e-7])  # a tie within rounding
    reference[1, :2] = torch.tensor([5.0, 4.0])  # a clear winner
    tie_flipped = reference.clone()
    tie_flipped[0, 1] += 2e-7
    assert _check(reference, tie_flipped)["top1_flips"] == 0
    clear_flipped = reference.clone()
    clear_flipped[1, 1] += 1.5
    with pytest.raises(ExportError, match="top-1 token differs at 1 of 2"):
        # the logit difference alone (1.5) would also fail; the top-1 reason must be named too
        _check(reference, clear_flipped)


def _leave_one_layer_unmerged(model):
    for layer in _lora_layers(model)[3:4]:
        torch.nn.init.zeros_(layer.lora_B["default"].weight)


def _drop_a_decoder_layer(model):
    merged = merge.fold_adapter(model)
    layers = merged.model.layers
    del layers[len(layers) - 1]
    merged.config.num_hidden_layers -= 1
    return _AlreadyMerged(merged)


def _wrong_scaling(model):
    for layer in _lora_layers(model):
        layer.scaling["default"] = 1.0  # alpha/r forgotten (it is 2 for this adapter)


def _wrong_adapter(model):
    # the same adapter's weights loaded into the wrong modules (each layer gets the next one's)
    layers = _lora_layers(model)
    by_shape: dict = {}
    for layer in layers:
        by_shape.setdefault((tuple(layer.lora_A["default"].weight.shape), tuple(layer.lora_B["default"].weight.shape)),
                            []).append(layer)
    for group in by_shape.values():
        weights = [(g.lora_A["default"].weight.detach().clone(), g.lora_B["default"].weight.detach().clone())
                   for g in group]
        for layer, (a, b) in zip(group, weights[1:] + weights[:1]):
            layer.lora_A["default"].weight.data.copy_(a)
            layer.lora_B["default"].weight.data.copy_(b)


class _AlreadyMerged:
    """A merged model that `fold_adapter` hands back unchanged (for breakers that merge themselves)."""

    def __init__(self, model):
        self.model = model

    def merge_and_unload(self, safe_merge=True):
        return self.model


@pytest.mark.parametrize("breaker", [_leave_one_layer_unmerged, _drop_a_decoder_layer, _wrong_scaling, _wrong_adapter],
                         ids=["layer-unmerged", "decoder-layer-dropped", "wrong-scaling", "wrong-adapter"])
def test_a_broken_merge_fails_the_check_with_figures(adapter_model, breaker):
    model, ids, mask, reference = adapter_model
    with pytest.raises(ExportError) as failure:
        _check(reference, _merged_logits(model, ids, mask, breaker))
    message = failure.value.message
    assert "differ from the adapter model's by up to" in message
    assert "e-" in message or "e+" in message  # figures in scientific notation, with digits to compare


def test_merge_run_stops_on_a_broken_merge(tmp_path, monkeypatch):
    honest_fold = merge.fold_adapter

    def fold_with_wrong_scaling(model):
        _wrong_scaling(model)
        return honest_fold(model)

    monkeypatch.setattr(merge, "fold_adapter", fold_with_wrong_scaling)
    with helpers.one_thread(), pytest.raises(ExportError, match="not the adapter model"):
        merge.run(MergeConfig(run=str(helpers.lora_run()), out=tmp_path / "merged"), say=lambda *_: None)
    assert not (tmp_path / "merged" / "model.safetensors").exists()


def test_merge_run_records_the_adapter_effect_and_tolerance_rule(tmp_path):
    with helpers.one_thread():
        parity = merge.run(MergeConfig(run=str(helpers.lora_run()), out=tmp_path / "merged"), say=lambda *_: None).parity
    assert parity["adapter_effect_max_abs"] > 10 * parity["tolerance"]  # the check can see the adapter
    assert parity["tolerance_rule"].endswith("x max |logit|")
