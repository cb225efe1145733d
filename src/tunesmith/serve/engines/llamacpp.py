"""llama.cpp behind tunesmith: `llama-server` on a GGUF of the base (or merged) model.

Every adapter served at startup is converted to a GGUF LoRA file and given with `--lora`, with
`--lora-init-without-apply` so that none applies unless a request asks; a request names its
adapter through llama-server's per-request `lora` list (`[{"id": i, "scale": 1.0}]`, the ids in
`--lora` order; adapters left out get scale 0, and the base lists every adapter at scale 0).

Adapters added while serving are refused with 409: llama-server reads its LoRA files only at
start, and restarting it would cut every stream in flight. Restart tunesmith with the new
`--adapter` instead (a rolling restart behind a load balancer keeps the service up).
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import ServeError
from tunesmith.serve.adapters import PreparedAdapter, Target
from tunesmith.serve.engines.remote import LOOPBACK, RemoteEngine, _done
from tunesmith.serve.protocol import APIError


def llama_server_command(*, executable: str, gguf: str, host: str, port: int, lora_files: list[str],
                         parallel: int, context_length: int, threads: int | None = None,
                         extra_args: list[str] = ()) -> list[str]:
    """The `llama-server` command line; `context_length` is per slot, so the total is times `parallel`."""
    argv = [executable, "-m", gguf, "--host", host, "--port", str(port), "--parallel", str(parallel),
            "--ctx-size", str(context_length * parallel), "--no-webui"]
    if threads:
        argv += ["--threads", str(threads)]
    for path in lora_files:
        argv += ["--lora", path]
    if lora_files:
        # No host-memory prompt cache: it restores a prompt's state by its tokens alone, so a state
        # computed under one adapter would be reused for a request naming another.
        argv += ["--lora-init-without-apply", "--cache-ram", "0"]
    argv.extend(extra_args)
    return argv


LLAMA_SERVER_CACHE = Path.home() / ".cache" / "tunesmith" / "llama-server"


def find_llama_server(name: str = "llama-server") -> str | None:
    """`name` when it is a path or on PATH, else the newest binary `make llama-server` cached."""
    found = shutil.which(name)
    if found:
        return found
    if name != "llama-server":
        return None
    cached = sorted(LLAMA_SERVER_CACHE.glob("*/llama-server"))
    return str(cached[-1]) if cached else None


class LlamaCppEngine(RemoteEngine):
    name = "llama.cpp"
    seed_range = 1 << 31  # llama-server reads `seed` as a 32-bit int (-1 means random)

    def __init__(self, *args, base_config, context_length: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_config = base_config
        self.context_length = context_length
        self._lora_ids: dict[str, int] = {}
        self._workdir: Path | None = None

    def gguf_path(self) -> str:
        gguf = self.cfg.engine_options.gguf
        if gguf is None:
            raise ServeError("--engine llama.cpp needs the model as a GGUF file",
                             hint="write one with `tunesmith export gguf --quant f16` and pass it with --gguf")
        if not gguf.is_file():
            raise ServeError(f"--gguf {gguf} is not a file")
        return str(gguf)

    def convert_adapters(self) -> list[str]:
        from tunesmith.serve.engines.gguf_lora import convert_lora_to_gguf

        files = []
        if self.registry.names():
            self._workdir = Path(tempfile.mkdtemp(prefix="tunesmith-lora-"))
        for i, name in enumerate(self.registry.names()):
            prepared = self.registry.get(name)
            out = self._workdir / f"{i:03d}-{name}.gguf"
            files.append(str(convert_lora_to_gguf(prepared.info.adapter_dir, self.base_config, out)))
            self._lora_ids[name] = i
        return files

    def command(self) -> list[str]:
        gguf = self.gguf_path()
        opts = self.cfg.engine_options
        return llama_server_command(executable=find_llama_server(opts.llama_server) or opts.llama_server, gguf=gguf, host=LOOPBACK, port=self.port,
                                    lora_files=self.convert_adapters(), parallel=self.cfg.max_batch_size,
                                    context_length=self.context_length, threads=self.cfg.threads,
                                    extra_args=opts.extra_args)

    def install_hint(self) -> str:
        return "put llama-server on PATH (`make llama-server` builds one), or set engine_options.llama_server"

    def request_fields(self, target: Target) -> dict[str, Any]:
        if target.adapter is None:
            # Every adapter at scale 0: llama-server reads an empty list as "the start-up scales",
            # which are 1.0 for each --lora even with --lora-init-without-apply.
            return {"lora": [{"id": i, "scale": 0.0} for i in sorted(self._lora_ids.values())]}
        return {"lora": [{"id": self._lora_ids[target.adapter], "scale": 1.0}]}

    def sampling_fields(self, params) -> dict[str, Any]:
        # llama-server's defaults add top-k 40 and min-p 0.05; tunesmith samples from temperature
        # and top_p alone, so both are switched off (and penalties stay neutral).
        return {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "cache_prompt": True}

    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        if self.process is None:
            return super().add_adapter(prepared)
        return _done(_refuse_runtime_load)

    def remove_adapter(self, name: str) -> concurrent.futures.Future:
        if self.process is None:
            return super().remove_adapter(name)
        # Forgetting the name is enough: the file stays loaded in llama-server at scale 0.
        return _done(lambda: self.registry.remove(name))

    def shutdown(self, timeout: float = 30.0) -> None:
        super().shutdown(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _refuse_runtime_load() -> None:
    raise APIError(409, "The llama.cpp engine loads adapters only at start: restart the server with this "
                   "adapter among its --adapter options.", code="adapter_load_unsupported")
