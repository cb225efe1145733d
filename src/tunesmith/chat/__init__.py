"""Chat templates, tokenisation with loss masks, and packing: what makes training and serving agree.

- `templates`: the model's own chat template or tunesmith's ChatML default, and `render_prompt`,
  the one rendering function that training, evaluation and serving share;
- `tokens`: end-of-turn and stop token ids, a pad token that is never a stop token, and
  `prepare_chat_model`, which readies a tokenizer and model for chat fine-tuning;
- `masking`: `tokenize_conversation`, labels on exactly the tokens the model must generate;
- `packing`: padded and packed (padding-free) collators and first-fit-decreasing bin packing.

The submodules are imported explicitly (`from tunesmith.chat.masking import ...`) so that
importing the package does not import torch.
"""
