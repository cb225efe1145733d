"""vLLM behind tunesmith: `vllm serve` with LoRA on, every served adapter under its tunesmith name.

vLLM names a request's adapter by `model`, so an adapter is requested by its own name and the
base by the served name (`--served-model-name`). Runtime loads and unloads go to vLLM's
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, which exist only with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; tunesmith sets it only when runtime loading is on
(`--adapter-root`), and vLLM's port stays on loopback, so its management routes are reachable
only through tunesmith's (authenticated) ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Any

import httpx

from tunesmith.errors import ServeError
from tunesmith.serve.adapters import PreparedAdapter, Target
from tunesmith.serve.engines.compat import VLLM_RANKS, lora_rank, vllm_rank
from tunesmith.serve.engines.remote import LOOPBACK, RemoteEngine
from tunesmith.serve.protocol import APIError


def vllm_command(*, executable: str, model: str, served_name: str, host: str, port: int,
                 adapters: dict[str, str], max_loras: int, max_lora_rank: int, max_num_seqs: int,
                 extra_args: list[str] = ()) -> list[str]:
    """The `vllm serve` command line. `adapters` maps names to adapter directories."""
    argv = [executable, "serve", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
            "--max-num-seqs", str(max_num_seqs)]
    if adapters:
        argv.append("--lora-modules")
        argv.extend(f"{name}={path}" for name, path in adapters.items())
    argv.extend(extra_args)
    return argv


class VLLMEngine(RemoteEngine):
    name = "vllm"

    def __init__(self, *args, model_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_path = model_path  # resolved: vLLM knows neither `default` nor tunesmith's aliases

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
        opts = self.cfg.engine_options
        return vllm_command(executable=opts.vllm, model=self.model_path, served_name=self.base_name,
                            host=LOOPBACK, port=self.port, adapters=self._adapter_dirs(),
                            max_loras=self.cfg.max_loaded_adapters, max_lora_rank=self.max_lora_rank(),
                            max_num_seqs=self.cfg.max_batch_size, extra_args=opts.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.cfg.adapter_root is not None:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env

    def install_hint(self) -> str:
        return "pip install vllm (on a machine with a supported GPU), or set engine_options.vllm to its path"

    def request_fields(self, target: Target) -> dict[str, Any]:
        return {"model": target.adapter or self.base_name}

    def sampling_fields(self, params) -> dict[str, Any]:
        # vLLM applies the model's generation_config.json defaults (top_k...) to fields a request
        # leaves out; tunesmith's engine samples from temperature and top_p alone.
        return {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}

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


