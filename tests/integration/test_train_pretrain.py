"""`objective: pretrain`: loss on every token of the corpus, EOS between documents, and a stated
share of conversations when mixed."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tunesmith.config import load_config
from tunesmith.train.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train import sft
from tunesmith.train.batching import tokenize_rows
from tunesmith.train.pretrain import PretrainObjective

DOCS = ["Billing disputes are handled within five business days by the finance team.",
        "Shipping delays over a week are escalated to the carrier desk. " * 30,
        "Security incidents go to the on-call engineer immediately."]


def _config(tiny_model, data, tmp_path, *extra):
    return load_config(TrainConfig, None, [f"model={tiny_model}", f"data.path={data}", f"output_dir={tmp_path / 'run'}",
                                          "objective=pretrain", "train.max_seq_len=256", "train.micro_batch_size=2",
                                          "train.max_steps=2", "lora.r=4", *extra])


def test_every_corpus_token_trains_and_documents_end_with_eos(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cfg = _config(tiny_model, tmp_path, tmp_path)
    data = PretrainObjective(cfg).tokenize([{"text": d} for d in DOCS], tokenizer, "train")
    stream = [t for e in data.examples for t in e["input_ids"]]
    assert stream.count(tokenizer.eos_token_id) == len(DOCS)
    assert all(len(e["input_ids"]) <= 256 for e in data.examples)
    assert len(data.examples) > len(DOCS)  # the long document became several windows
    for e in data.examples:
        assert e["labels"] == e["input_ids"]


def test_mix_ratio_sets_the_share_of_conversation_tokens(tiny_model, prepared, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chats = [json.loads(line) for line in (prepared / "train.jsonl").read_text().splitlines()]
    rows = [{"text": d} for d in DOCS * 4] + chats
    with pytest.raises(TrainingError, match="data.mix_ratio is unset"):
        PretrainObjective(_config(tiny_model, tmp_path, tmp_path)).tokenize(rows, tokenizer, "train")
    objective = PretrainObjective(_config(tiny_model, tmp_path, tmp_path, "data.mix_ratio=0.25"))
    objective.tokenize(rows, tokenizer, "train")
    mix = objective.mix
    conversations = tokenize_rows(chats, tokenizer, objective.settings, "train").examples
    biggest = max(sum(1 for t in e["labels"][1:] if t != -100) for e in conversations)
    # the share overshoots by at most one conversation
    assert 0.25 <= mix["conversation_share"] <= 0.25 + biggest / (mix["corpus_tokens"] + mix["conversation_tokens"])


def test_a_pretrain_run_records_its_mix(tiny_model, prepared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    chats = (prepared / "train.jsonl").read_text().splitlines()[:8]
    (data / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 4)
                                      + "\n".join(chats) + "\n")
    result = sft.run(_config(tiny_model, data, tmp_path, "data.mix_ratio=0.3"))
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["objective"] == "pretrain" and manifest["data_mix"]["conversation_share"] >= 0.3
    with pytest.raises(TrainingError, match="needs a corpus"):
        sft.run(_config(tiny_model, prepared, tmp_path / "other"))
