"""The engines that generate tokens behind tunesmith's API: its own (`own`, the default and the
reference), llama.cpp's `llama-server` and vLLM's OpenAI server. Routes talk to them only
through `GenerationEngine` (base.py)."""

ENGINE_NAMES = ("own", "llama.cpp", "vllm")
