"""TRL's `SFTTrainer` as a peer of the training benchmark, at its best documented CPU settings.

The trainer gets the benchmark's tokenised examples as a pre-tokenised dataset (`input_ids` and
`labels`, -100 on tokens without loss): TRL 1.16 uses a `labels` column as is, so it trains on
exactly the tokens tunesmith trains on (assistant turns, every turn of a multi-turn example).
The two forms TRL documents for loss on the answer only were tried on the demo tickets and do
not give that: the conversational form with `assistant_only_loss=True` refuses both the demo
model's and SmolLM2's chat templates ("The chat template is not training-compatible (missing
prefix-preservation or `{% generation %}` markers) and patching is not supported for this
template"), and the prompt-completion form (every message but the last as the prompt) trains
only the last assistant turn: 13,635 instead of 15,349 trained tokens on the first 300 demo
examples, 9,588 instead of 10,699 on SmolLM2.

Settings: `packing=True` with TRL's default best-fit-decreasing strategy into rows of
`max_length` tokens (which makes batches padding-free: the rows of a micro-batch are flattened
into one sequence with restarting `position_ids`, and the label of each example's first token
is dropped), `use_cpu=True`, fp32 (`bf16=False`), no dataloader workers. Trained tokens are
counted on the micro-batches the trainer trains on (labels other than -100 after a row's first
position), the same count as the other variants; the time is that of `trainer.train()`.
"""

from __future__ import annotations

import tempfile
import time

from child_runs import counting_trained_tokens


def run_trl(args, tokenizer, examples: list[dict[str, list[int]]]) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model

    model = load_model(ModelConfig(path=args.model))
    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.micro_batch_size, max_steps=args.steps,
            learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=10,
            max_length=args.max_seq_len, packing=True, save_strategy="no", report_to=[],
            use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0, disable_tqdm=True, seed=42,
        )
        trainer = counting_trained_tokens(SFTTrainer)(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"trained_tokens": trainer.trained_tokens, "seconds": seconds}
