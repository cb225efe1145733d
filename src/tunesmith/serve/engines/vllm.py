"""vLLM behind tunesmith: `vllm serve` with LoRA on, every served adapter under its tunesmith name.

vLLM names a request's adapter by `model`, so an adapter is requested by its own name and the
base by the served name (`--served-model-name`). Runtime loads and unloads go to vLLM's
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, which exist only with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; tunesmith sets it only when runtime loading is on
(`--adapter-root`). vLLM listens on loopback and requires a key that tunesmith draws at each start
and hands over in VLLM_API_KEY (the environment, not argv, which every local user can read), so
its routes, the management ones included, are reachable only through tunesmith's authenticated API.
Checked against vLLM 0.33's source (vllm/entrypoints, vllm/lora, vllm/config/lora.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from typing import Any, Optional

import httpx

from tunesmith.errors import ConfigError, ServeError
from tunesmith.serve.adapters import PreparedAdapter, Target
from tunesmith.serve.engines.base import SamplingParams
from tunesmith.serve.engines.compat import VLLM_RANKS, lora_rank, vllm_rank
from tunesmith.serve.engines.remote import LOOPBACK, RemoteEngine
from tunesmith.serve.protocol import APIError


# tunesmith's `model.dtype` -> vLLM's `--dtype` (vllm/config/model.py: ModelDType); `auto` is left to vLLM.
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def lora_module(name: str, path: str, base_model_name: str) -> str:
    """One `--lora-modules` item. vLLM reads `name=path` only when the item has no comma and takes
    anything else as JSON (LoRAParserAction in vllm/entrypoints/common/cli_args.py), so a path
    with a comma breaks the short form; the JSON form holds any path."""
    return json.dumps({"name": name, "path": path, "base_model_name": base_model_name})


def vllm_command(*, executable: str, model: str, served_name: str, host: str, port: int,
                 adapters: dict[str, str], max_loras: int, max_lora_rank: int, max_num_seqs: int,
                 max_model_len: Optional[int] = None, dtype: str = "auto", revision: Optional[str] = None,
                 trust_remote_code: bool = False, extra_args: list[str] = ()) -> list[str]:
    """The `vllm serve` command line. `adapters` maps names to adapter directories."""
    argv = [executable, "serve", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
            "--max-num-seqs", str(max_num_seqs)]
    if max_model_len is not None:  # the context tunesmith checks requests against, so both refuse the same
        argv += ["--max-model-len", str(max_model_len)]
    if dtype != "auto":
        argv += ["--dtype", VLLM_DTYPES[dtype]]
    if revision:
        argv += ["--revision", revision]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if adapters:
        argv.append("--lora-modules")
        argv.extend(lora_module(name, path, served_name) for name, path in adapters.items())
    argv.extend(extra_args)
    return argv


class VLLMEngine(RemoteEngine):
    name = "vllm"
    key_flags = ("--api-key",)  # it would replace the key tunesmith hands over in VLLM_API_KEY

    def __init__(self, *args, model_path: str, context_length: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.model.quantization != "none":
            raise ConfigError(f"--quantization {self.cfg.model.quantization} loads the base with bitsandbytes, which "
                              "vLLM does not offer", hint="drop --quantization, or give vLLM one of its own methods "
                              "in engine_options.extra_args (e.g. --quantization fp8)")
        self.model_path = model_path  # resolved: vLLM knows neither `default` nor tunesmith's aliases
        self.context_length = context_length

    def _adapter_dirs(self) -> dict[str, str]:
        return {name: str(self.registry.get(name).info.adapter_dir) for name in self.registry.names()}

    def max_lora_rank(self) -> int:
        """vLLM reserves room for `max_loras` adapters of this rank up front, so it is the largest
        startup adapter's rank when adapters cannot be added later, else the server's limit (both
        rounded up to a rank vLLM accepts)."""
        if self.cfg.adapter_root is not None:
            return vllm_rank(min(self.cfg.max_lora_rank, VLLM_RANKS[-1]))
        ranks = [lora_rank(self.registry.get(name).info.peft_config) for name in self.registry.names()]
        return vllm_rank(max(ranks, default=8))

    def command(self) -> list[str]:
        opts, model = self.cfg.engine_options, self.cfg.model
        return vllm_command(executable=opts.vllm, model=self.model_path, served_name=self.base_name,
                            host=LOOPBACK, port=self.port, adapters=self._adapter_dirs(),
                            max_loras=self.cfg.max_loaded_adapters, max_lora_rank=self.max_lora_rank(),
                            max_num_seqs=self.cfg.max_batch_size, max_model_len=self.context_length,
                            dtype=model.dtype, revision=model.revision, trust_remote_code=model.trust_remote_code,
                            extra_args=opts.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Replaces any VLLM_API_KEY the user's shell holds: vLLM would require that one instead
        # (vllm/entrypoints/serve/middleware/register.py) and refuse tunesmith's requests with 401.
        env["VLLM_API_KEY"] = self.engine_key
        env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
        if self.cfg.adapter_root is not None:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env


    def install_hint(self) -> str:
        return "pip install vllm (on a machine with a supported GPU), or set engine_options.vllm to its path"

    def request_fields(self, target: Target) -> dict[str, Any]:
        return {"model": target.adapter or self.base_name}

    def sampling_fields(self, params) -> dict[str, Any]:
        # vLLM fills every field a request leaves out from the model's generation_config.json
        # (ModelConfig.get_diff_sampling_param in vllm/config/model.py); tunesmith's engine samples
        # from temperature and top_p alone and decodes without special tokens.
        return {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "skip_special_tokens": True}

    def _body(self, target: Target, prompt: list[int], params: SamplingParams, index: int) -> dict[str, Any]:
        body = super()._body(target, prompt, params, index)
        if not params.ignore_eos:
            # vLLM stops by itself only on the base tokenizer's EOS and the base generation_config's
            # eos_token_id (SamplingParams.update_from_generation_config); tunesmith's engine also
            # stops on the chat template's end-of-turn token and on an adapter's own stop tokens.
            body["stop_token_ids"] = sorted(target.stop_ids)
        return body

    # ------------------------------------------------------------------ runtime adapters

    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        if self.process is None:  # startup adapters: they go on the command line
            return super().add_adapter(prepared)
        return asyncio.run_coroutine_threadsafe(self._load(prepared), self._loop())

    def remove_adapter(self, name: str) -> concurrent.futures.Future:
        if self.process is None:
            return super().remove_adapter(name)
        return asyncio.run_coroutine_threadsafe(self._unload(name), self._loop())

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise APIError(503, f"The vllm engine is unavailable: {type(exc).__name__}.", type="server_error",
                           code="engine_unavailable") from None
        if response.status_code != 200:
            raise self._refusal(response.status_code, response.content)

    async def _load(self, prepared: PreparedAdapter) -> None:
        rank = lora_rank(prepared.info.peft_config)
        if rank > self.max_lora_rank():
            raise ServeError(f"adapter {prepared.name!r} has rank {rank}; the vLLM engine was started with "
                             f"--max-lora-rank {self.max_lora_rank()}", hint="raise max_lora_rank and restart")
        await self._post("/v1/load_lora_adapter",
                         {"lora_name": prepared.name, "lora_path": str(prepared.info.adapter_dir)})
        self.registry.add(prepared)

    async def _unload(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        self.registry.remove(name)


