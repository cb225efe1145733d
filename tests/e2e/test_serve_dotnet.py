"""The C# client in examples/clients/dotnet compiles with Mono's compiler and gets the same answers
from a live server as the Python SDK. Skipped where Mono is not installed (apt-get install mono-devel)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tunesmith.serve.config import ServeConfig

from serve_helpers import LiveServer, build_adapter

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clients" / "dotnet"
KEY = "dotnet-test-key"

pytestmark = pytest.mark.skipif(not (shutil.which("mcs") and shutil.which("mono")),
                                reason="Mono's C# compiler is not installed (apt-get install mono-devel)")


@pytest.fixture(scope="module")
def client_exe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dotnet") / "client.exe"
    result = subprocess.run(["mcs", f"-out:{out}", "-r:System.Net.Http.dll", "-r:System.Runtime.Serialization.dll",
                             str(EXAMPLE / "Program.cs"), str(EXAMPLE / "TunesmithClient.cs")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_csharp_client_gets_the_same_answers_as_the_python_sdk(client_exe, tmp_path):
    adapter = build_adapter(tmp_path / "support", seed=11)
    with LiveServer(ServeConfig(adapters={"support": str(adapter)}, api_key=KEY, log_level="critical")) as live:
        result = subprocess.run(["mono", str(client_exe), live.url, "support"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "TUNESMITH_API_KEY": KEY})
        assert result.returncode == 0, result.stdout + result.stderr
        expected_generate = httpx.post(live.url + "/generate", headers={"Authorization": f"Bearer {KEY}"},
                                       json={"prompt": "What does json.dumps do?", "model": "support",
                                             "max_tokens": 16}).json()["response"]
        sdk = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)
        expected_chat = sdk.chat.completions.create(
            model="support", max_tokens=16, temperature=0,
            messages=[{"role": "system", "content": "You answer questions about Python."},
                      {"role": "user", "content": "How do I sort a list?"}]).choices[0].message.content
        assert result.stdout == f"generate: {expected_generate}\nchat: {expected_chat}\n"

        unauthorised = subprocess.run(["mono", str(client_exe), live.url, "support"], capture_output=True,
                                      text=True, timeout=120, env={**os.environ, "TUNESMITH_API_KEY": "wrong"})
        assert unauthorised.returncode == 1 and "invalid_api_key" in unauthorised.stderr
