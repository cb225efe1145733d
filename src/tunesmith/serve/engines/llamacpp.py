"""llama.cpp behind tunesmith: `llama-server` on a GGUF of the base (or merged) model.

Every adapter served at startup is converted to a GGUF LoRA file and given with `--lora`, with
`--lora-init-without-apply` so that none applies unless a request asks; a request names its
adapter through llama-server's per-request `lora` list (`[{"id": i, "scale": 1.0}]`, the ids in
`--lora` order; adapters left out get scale 0, and the base lists every adapter at scale 0).

An adapter added while serving needs a new llama-server, since llama-server reads its LoRA
files only at start. tunesmith starts a second one with every adapter's file plus the new one on
another port, waits for its health check, and then switches new requests to it at once; requests
already sent finish on the old process, which stops when the last of them ends (or after the
drain timeout). Nothing fails, but for the seconds of the switch the machine holds the model
twice. Removing an adapter only forgets its name (its file stays loaded at scale 0).

llama-server listens on loopback and requires a key that tunesmith draws at each start and hands
over in LLAMA_API_KEY (the environment, not argv, which every local user can read); /health stays
open, as in llama-server (tools/server/server-http.cpp). Checked against the llama.cpp sources
vendored in llama-cpp-python 0.3.36.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tunesmith.errors import ServeError
from tunesmith.serve.adapters import PreparedAdapter, Target
from tunesmith.serve.engines.remote import LOOPBACK, RemoteEngine, _done, free_loopback_port, terminate

log = logging.getLogger("tunesmith.serve")


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


# llama-server reads an environment variable per option (common/arg.cpp, `set_env`), applied before
# argv, so an option on the command line wins (common_params_parse_ex). These are dropped from the
# environment tunesmith starts it with: the key variables (tunesmith sets its own; a key file would
# add keys and a missing one stops the start), the options tunesmith passes (the command line wins
# anyway, with a warning), and those that would break what tunesmith relies on: another route
# prefix, TLS on the loopback port, an embeddings- or router-only server, another model source,
# context shift (tunesmith refuses what exceeds the context instead), a server-wide n_predict.
LLAMA_SERVER_ENV_DROPPED = (
    "LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE", "LLAMA_ARG_MODEL", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT",
    "LLAMA_ARG_N_PARALLEL", "LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_UI", "LLAMA_ARG_CACHE_RAM", "LLAMA_ARG_API_PREFIX",
    "LLAMA_ARG_SSL_KEY_FILE", "LLAMA_ARG_SSL_CERT_FILE", "LLAMA_ARG_EMBEDDINGS", "LLAMA_ARG_RERANKING",
    "LLAMA_ARG_MODELS_DIR", "LLAMA_ARG_MODELS_PRESET", "LLAMA_ARG_MODEL_URL", "LLAMA_ARG_HF_REPO",
    "LLAMA_ARG_HF_FILE", "LLAMA_ARG_DOCKER_REPO", "LLAMA_ARG_CONTEXT_SHIFT", "LLAMA_ARG_N_PREDICT",
    # the `LLAMA_ARG_NO_` forms llama.cpp also reads for the on/off options above (get_value_from_env)
    "LLAMA_ARG_NO_UI", "LLAMA_ARG_NO_CONTEXT_SHIFT",
)


def llama_server_environment(environ: dict[str, str], *, key: str, threads_on_argv: bool) -> dict[str, str]:
    """`environ` without the variables above, with LLAMA_API_KEY set to `key`."""
    dropped = set(LLAMA_SERVER_ENV_DROPPED) | ({"LLAMA_ARG_THREADS"} if threads_on_argv else set())
    env = {name: value for name, value in environ.items() if name not in dropped}
    ignored = sorted(set(environ) - set(env))
    if ignored:
        log.warning("starting llama-server without %s from the environment (tunesmith sets these itself)",
                    ", ".join(ignored))
    env["LLAMA_API_KEY"] = key
    return env


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
    key_flags = ("--api-key", "--api-key-file")  # would add keys; a missing key file stops the start
    seed_range = 1 << 31  # llama-server reads `seed` as a 32-bit int (-1 means random)

    def __init__(self, *args, base_config, context_length: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_config = base_config
        self.context_length = context_length
        self._lora_ids: dict[str, int] = {}  # replaced whole (never edited) when the process is
        self._lora_files: dict[str, str] = {}  # converted once per adapter name
        self._workdir: Path | None = None
        self._swap_lock = threading.Lock()  # one process swap at a time
        self._retiring: list[threading.Thread] = []

    def gguf_path(self) -> str:
        gguf = self.cfg.engine_options.gguf
        if gguf is None:
            raise ServeError("--engine llama.cpp needs the model as a GGUF file",
                             hint="write one with `tunesmith export gguf --quant f16` and pass it with --gguf")
        if not gguf.is_file():
            raise ServeError(f"--gguf {gguf} is not a file")
        return str(gguf)

    def lora_file(self, prepared: PreparedAdapter) -> str:
        from tunesmith.serve.engines.gguf_lora import convert_lora_to_gguf

        if prepared.name not in self._lora_files:
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="tunesmith-lora-"))
            out = self._workdir / f"{len(self._lora_files):03d}-{prepared.name}.gguf"
            self._lora_files[prepared.name] = str(convert_lora_to_gguf(prepared.info.adapter_dir, self.base_config, out))
        return self._lora_files[prepared.name]

    def lora_plan(self, adapters: list[PreparedAdapter]) -> tuple[list[str], dict[str, int]]:
        """The `--lora` files for these adapters and each adapter's id (its place in that list)."""
        return [self.lora_file(p) for p in adapters], {p.name: i for i, p in enumerate(adapters)}

    def command_for(self, port: int, lora_files: list[str]) -> list[str]:
        opts = self.cfg.engine_options
        return llama_server_command(executable=find_llama_server(opts.llama_server) or opts.llama_server,
                                    gguf=self.gguf_path(), host=LOOPBACK, port=port, lora_files=lora_files,
                                    parallel=self.cfg.max_batch_size, context_length=self.context_length,
                                    threads=self.cfg.threads, extra_args=opts.extra_args)

    def command(self) -> list[str]:
        files, self._lora_ids = self.lora_plan([self.registry.get(n) for n in self.registry.names()])
        return self.command_for(self.port, files)

    def environment(self) -> dict[str, str]:
        return llama_server_environment(dict(os.environ), key=self.engine_key, threads_on_argv=bool(self.cfg.threads))


    def install_hint(self) -> str:
        return "put llama-server on PATH (`make llama-server` builds one), or set engine_options.llama_server"

    def request_fields(self, target: Target) -> dict[str, Any]:
        if target.adapter is None:
            # Every adapter at scale 0: llama-server reads an empty list as "the start-up scales",
            # which are 1.0 for each --lora even with --lora-init-without-apply.
            return {"lora": [{"id": i, "scale": 0.0} for i in sorted(self._lora_ids.values())]}
        return {"lora": [{"id": self._lora_ids[target.adapter], "scale": 1.0}]}

    def sampling_fields(self, params) -> dict[str, Any]:
        # A request starts from llama-server's own sampling settings (server-schema.cpp copies
        # params_base.sampling), which default to top-k 40 and min-p 0.05 and which LLAMA_ARG_*
        # variables, a config.ini or the GGUF's general.sampling.* keys can change; tunesmith
        # samples from temperature and top_p alone, so every other sampler is sent switched off.
        return {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "dry_multiplier": 0.0, "xtc_probability": 0.0, "typical_p": 1.0, "top_n_sigma": -1.0, "mirostat": 0,
                "cache_prompt": True}

    def add_adapter(self, prepared: PreparedAdapter) -> concurrent.futures.Future:
        if self.process is None:
            return super().add_adapter(prepared)
        if self.registry.get(prepared.name) is not None:
            return _done(lambda: self.registry.add(prepared))  # the registry's own "already loaded"
        future: concurrent.futures.Future = concurrent.futures.Future()

        def swap() -> None:
            try:
                future.set_result(self._swap_in(prepared))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        threading.Thread(target=swap, name=f"llama.cpp-load-{prepared.name}", daemon=True).start()
        return future

    def _swap_in(self, prepared: PreparedAdapter) -> None:
        """Start a llama-server that also holds `prepared`, switch new requests to it, and retire
        the old one once its requests have finished."""
        with self._swap_lock:
            adapters = [self.registry.get(n) for n in self.registry.names()] + [prepared]
            files, lora_ids = self.lora_plan([a for a in adapters if a is not None])
            port = free_loopback_port()
            url = f"http://{LOOPBACK}:{port}"
            process = self.spawn(self.command_for(port, files), url)
            client = self.new_client(url)
            with self._route_lock:
                stopping = self._stopping
                if not stopping:
                    old_process, old_client = self.process, self._client
                    self.process, self._client, self.port, self.url = process, client, port, url
                    self._lora_ids = lora_ids
                    self.registry.add(prepared)
            if stopping:  # shutdown began while the new process started
                terminate(process)
                raise ServeError("the server is shutting down")
            log.info("llama.cpp now serves %d adapter(s) from %s; retiring the previous process",
                     len(lora_ids), url)
            retire = threading.Thread(target=self._retire, args=(old_process, old_client), daemon=True,
                                      name="llama.cpp-retire")
            self._retiring.append(retire)
            retire.start()

    def _retire(self, process, client) -> None:
        deadline = time.monotonic() + self.cfg.drain_timeout
        while client is not None and self.users(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process is not None:
            terminate(process)
        loop = self._event_loop
        if client is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))

    def remove_adapter(self, name: str) -> concurrent.futures.Future:
        if self.process is None:
            return super().remove_adapter(name)
        # Forgetting the name is enough: the file stays loaded in llama-server at scale 0.
        return _done(lambda: self.registry.remove(name))

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._route_lock:  # a swap that has not switched yet sees this and stops its process
            self._stopping = True
        super().shutdown(timeout)
        for thread in list(self._retiring):
            thread.join(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
