"""A stand-in for vLLM's OpenAI server and llama.cpp's llama-server: the subset of their HTTP
API that tunesmith uses, started from their command lines, so the proxy can be tested on a CPU.

`engine_standin.py serve MODEL ...` behaves like `vllm serve`, anything else like llama-server.
It "generates" `<NAME:i>` for i < max_tokens, where NAME is what the request selected (vLLM: the
`model`; llama.cpp: the adapter named by the `lora` list, or `base`), and appends every request
body (plus its own argv and environment) as one JSON line to $STANDIN_LOG for the tests to read.
`max_tokens: 13` is refused with 400, like an engine refusing a request; `max_tokens: 14` stops
after two pieces and then stays silent; `max_tokens: 15` sends its pieces 0.1 s apart.
As vLLM (0.33) does, the vLLM stand-in reads `--lora-modules` items as `name=path` or JSON,
accepts only vLLM's `--max-lora-rank` values, requires VLLM_API_KEY as a bearer token on /v1
routes, and has the LoRA load/unload routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
As llama-server does (tools/server/server-http.cpp, middleware_validate_api_key), the llama.cpp
stand-in takes its keys from LLAMA_API_KEY (comma-separated) and refuses every request but /health
without one of them (`Authorization: Bearer KEY` or `X-Api-Key: KEY`) with 401.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

ARGV = sys.argv[1:]
VLLM = bool(ARGV) and ARGV[0] == "serve"
LOG = os.environ["STANDIN_LOG"]


def option(name: str) -> list[str]:
    return [ARGV[i + 1] for i, arg in enumerate(ARGV[:-1]) if arg == name]


def record(kind: str, body) -> None:
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"kind": kind, "body": body}) + "\n")


def lora_names() -> list[str]:
    """vLLM: names from --lora-modules; llama.cpp: the adapter files from --lora, checked to be
    GGUF LoRA files the way llama.cpp checks them (the tests read the tensors themselves)."""
    if VLLM:
        start = ARGV.index("--lora-modules") + 1 if "--lora-modules" in ARGV else len(ARGV)
        names = []
        for item in ARGV[start:]:
            if item.startswith("--"):
                break
            # vllm/entrypoints/common/cli_args.py, LoRAParserAction: `name=path` only without a
            # comma, anything else is JSON; a bad item stops vLLM with a usage error.
            if "=" in item and "," not in item:
                names.append(item.split("=", 1)[0])
            else:
                try:
                    names.append(json.loads(item)["name"])
                except (ValueError, KeyError, TypeError):
                    sys.exit(f"vllm serve: error: Invalid JSON format for --lora-modules: {item}")
        return names
    import gguf

    names = []
    for path in option("--lora"):
        reader = gguf.GGUFReader(path)
        kind = reader.fields["general.type"]
        assert bytes(kind.parts[kind.data[0]]).decode() == "adapter", path
        names.append(os.path.basename(path).split("-", 1)[1].removesuffix(".gguf"))
    return names


if VLLM and option("--max-lora-rank") and int(option("--max-lora-rank")[0]) not in (1, 8, 16, 32, 64, 128, 256,
                                                                                    320, 512):
    sys.exit("vllm serve: error: argument --max-lora-rank: invalid choice")  # MaxLoRARanks, vllm/config/lora.py
app = FastAPI()
LORAS = lora_names()
API_KEY = os.environ.get("VLLM_API_KEY") if VLLM else None
LLAMA_KEYS = [] if VLLM else [key for key in os.environ.get("LLAMA_API_KEY", "").split(",") if key]
RUNTIME_LORA = VLLM and os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")
record("start", {"argv": ARGV, "runtime_lora": os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
                 "api_key": API_KEY if VLLM else os.environ.get("LLAMA_API_KEY"),
                 "llama_env": sorted(name for name in os.environ if name.startswith("LLAMA_"))})


@app.middleware("http")
async def authenticate(request: Request, call_next):
    """vllm/entrypoints/serve/middleware/authenticate.py: with a key, /v1... needs it; /health does not."""
    if API_KEY and request.url.path.startswith(("/v1", "/v2", "/inference", "/cohere")) \
            and request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return JSONResponse({"error": "Unauthorized"}, status_code=401)
    if LLAMA_KEYS and request.url.path not in ("/health", "/v1/health"):
        given = request.headers.get("Authorization") or request.headers.get("X-Api-Key") or ""
        if given.removeprefix("Bearer ") not in LLAMA_KEYS:
            return JSONResponse({"error": {"message": "Invalid API Key", "type": "authentication_error",
                                           "code": 401}}, status_code=401)
    return await call_next(request)


@app.get("/health")
async def health():
    return {"status": "ok"}


def selected(body) -> str:
    if VLLM:
        return body["model"]
    chosen = [entry for entry in body.get("lora", []) if entry.get("scale")]
    return LORAS[chosen[0]["id"]] if chosen else "base"


@app.post("/v1/completions")
async def completions(request: Request):
    body = await request.json()
    record("completion", body)
    if body["max_tokens"] == 13:
        return JSONResponse({"error": {"message": "max_tokens 13 is unlucky", "type": "BadRequestError"}},
                            status_code=400)
    if VLLM and body["model"] not in [option("--served-model-name")[0], *LORAS]:
        return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist."}}, status_code=404)
    name = selected(body)

    async def events():
        pieces = 2 if body["max_tokens"] == 14 else body["max_tokens"]
        for i in range(pieces):
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f"<{name}:{i}>",
                                                               "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            await asyncio.sleep(0.1 if body["max_tokens"] == 15 else 0)
        if body["max_tokens"] == 14:
            await asyncio.sleep(3600)
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}) + "\n\n"
        yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": pieces}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def lora_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "InvalidUserInput", "param": None, "code": status}},
                        status_code=status)


async def load(request: Request):
    """vllm/entrypoints/openai/models/serving.py, load_lora_adapter: 400 for a name taken by the
    base or an adapter, else 200 with a plain-text message."""
    body = await request.json()
    record("load", body)
    if body["lora_name"] in option("--served-model-name"):
        return lora_error(f"The lora adapter '{body['lora_name']}' conflicts with a served base model.", 400)
    if body["lora_name"] in LORAS:
        return lora_error(f"The lora adapter '{body['lora_name']}' has already been loaded.", 400)
    LORAS.append(body["lora_name"])
    return Response(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")


async def unload(request: Request):
    body = await request.json()
    record("unload", body)
    if body["lora_name"] not in LORAS:
        return lora_error(f"The lora adapter '{body['lora_name']}' cannot be found.", 404)
    LORAS.remove(body["lora_name"])
    return Response(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")


if RUNTIME_LORA or not VLLM:  # vllm/entrypoints/serve/lora/api_router.py: attach_router
    app.post("/v1/load_lora_adapter")(load)
    app.post("/v1/unload_lora_adapter")(unload)


if __name__ == "__main__":
    uvicorn.run(app, host=option("--host")[0], port=int(option("--port")[0]), log_level="warning")
