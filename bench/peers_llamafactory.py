"""LLaMA-Factory as a peer of the training benchmark, run in a virtual environment of its own.

LLaMA-Factory 0.9.5 pins transformers<=5.6, peft<=0.18.1 and trl<=0.24, older than tunesmith's,
so it cannot share tunesmith's environment. On first use the benchmark creates one under
~/.cache/tunesmith/bench/llamafactory-venv (`TUNESMITH_BENCH_CACHE` moves it) with the same CPU
build of torch as tunesmith's and reuses it afterwards.

LLaMA-Factory also requires torchvision and torchaudio. PyPI's only torchvision for torch 2.13.0
(0.28.0) and its newest torchaudio (2.11.1, which accepts torch>=2.11) are built against the CUDA
build of torch: with the CPU build their compiled extensions fail to load ("libc10_cuda.so:
cannot open shared object file"). torchvision is then removed again (transformers fails to import
while a broken torchvision is installed, and LLaMA-Factory never imports it); torchaudio, which
LLaMA-Factory imports at start-up for audio inputs only, is handled by bench/llamafactory_child.py.
Both facts are checked on this machine, and the output says what was done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from child_runs import RESULT, failure_reason

LLAMAFACTORY = "llamafactory==0.9.5"
# torch 2.13.0 resolves to the local CPU wheel (2.13.0+cpu sorts above 2.13.0); torchvision 0.28.0
# is the release built for torch 2.13.0 (it requires torch==2.13.0); pinning both keeps pip from
# replacing torch to satisfy another torchvision or torchaudio.
PINS = ("torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.1")
NOTES = "bench-notes.txt"
VENV = Path(os.environ.get("TUNESMITH_BENCH_CACHE", Path.home() / ".cache" / "tunesmith" / "bench")) / "llamafactory-venv"


class PeerUnavailable(Exception):
    """A peer cannot run on this machine; the message says why, from what was observed."""


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])


def ensure_venv(venv: Path = VENV, say=print) -> Path:
    """LLaMA-Factory's environment, created and installed on first use; its Python."""
    python = venv_python(venv)
    ready = venv / ".installed"
    if ready.exists() and ready.read_text().strip() == " ".join((LLAMAFACTORY, *PINS)):
        return python
    say(f"installing {LLAMAFACTORY} into {venv} (first use; several minutes)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            raise PeerUnavailable(f"creating the virtual environment {venv} failed:\n{_tail(made.stderr)}")
    constraints = venv / "bench-constraints.txt"
    constraints.write_text("".join(pin + "\n" for pin in PINS))
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
           "-c", str(constraints), *PINS, LLAMAFACTORY]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"`{' '.join(cmd)}` did not finish within 30 minutes") from None
    if done.returncode != 0:
        raise PeerUnavailable(f"installing LLaMA-Factory failed (`pip install {' '.join((*PINS, LLAMAFACTORY))}`):\n"
                              f"{_tail(done.stderr or done.stdout)}")
    probe = subprocess.run([str(python), "-c", "import torch, llamafactory; "
                            "print(torch.__version__, torch.version.cuda, llamafactory.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise PeerUnavailable(f"LLaMA-Factory installed but does not import:\n{_tail(probe.stderr)}")
    torch_version, cuda, _ = probe.stdout.split()
    if cuda != "None":
        raise PeerUnavailable(f"pip installed a CUDA build of torch ({torch_version}, CUDA {cuda}) into {venv}; "
                              "remove that environment and install the CPU wheel")
    vision = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, text=True)
    notes = []
    if vision.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], capture_output=True)
        notes.append(f"torchvision removed from LLaMA-Factory's environment: with torch {torch_version} it fails to "
                     f"import ({failure_reason(vision.stderr, 1)}); LLaMA-Factory's text training does not use it")
    (venv / NOTES).write_text("".join(note + "\n" for note in notes))
    ready.write_text(" ".join((LLAMAFACTORY, *PINS)))
    return python


def install_notes(venv: Path = VENV) -> list[str]:
    path = venv / NOTES
    return path.read_text().splitlines() if path.exists() else []


def llamafactory_config(*, model: str, dataset_dir: Path, output_dir: Path, template: str | None, steps: int,
                        micro_batch_size: int, max_seq_len: int, learning_rate: float = 2e-4) -> dict:
    """The `llamafactory-cli train` configuration with the benchmark's settings: LoRA r16 alpha 32
    dropout 0.05 on every linear layer, packing without attention across examples (`neat_packing`),
    no gradient checkpointing (LLaMA-Factory turns it on by default; tunesmith and the other
    variants run without), fp32 on CPU, no checkpoint saved."""
    config = {
        "model_name_or_path": str(model), "trust_remote_code": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target": "all",
        "dataset": "tickets", "dataset_dir": str(dataset_dir), "cutoff_len": max_seq_len,
        "packing": True, "neat_packing": True, "overwrite_cache": True,
        "output_dir": str(output_dir), "overwrite_output_dir": True, "save_strategy": "no", "plot_loss": False,
        "report_to": "none", "logging_steps": 10, "disable_tqdm": True,
        "per_device_train_batch_size": micro_batch_size, "gradient_accumulation_steps": 1,
        "learning_rate": learning_rate, "max_steps": steps, "lr_scheduler_type": "cosine", "warmup_steps": 0.03,
        "bf16": False, "fp16": False, "use_cpu": True, "dataloader_num_workers": 0, "seed": 42,
        "disable_gradient_checkpointing": True,
    }
    if template is not None:
        config["template"] = template
    return config


def to_yaml(config: dict) -> str:
    """Flat mappings of scalars only: a JSON scalar is also a YAML scalar."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


def write_dataset(rows: list[dict], dataset_dir: Path) -> None:
    """The conversations as LLaMA-Factory's ShareGPT-style format with OpenAI-style messages,
    registered as `tickets` in dataset_info.json (a system message may open a conversation)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / "tickets.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps({"messages": row["messages"]}) + "\n")
    info = {"tickets": {
        "file_name": "tickets.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    }}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))


def model_directory(model: str) -> Path:
    if model == "default":
        import tunesmith.models

        return Path(tunesmith.models.__file__).parent / "default"
    return Path(model)


def try_llamafactory(args, data: Path, timeout_s: int = 3600) -> dict:
    """Train with `llamafactory-cli train` in its own environment on the first `args.examples`
    conversations of `data`; the result as the other variants report it, or `{"error": why}`.

    The template is `args.llamafactory_template`, or when that is None the model's own chat
    template as LLaMA-Factory parses it (`template` left out of the configuration). Checked on
    the demo tickets: the parsed template renders the demo model's and SmolLM2's prompts exactly
    as their chat templates do, SmolLM2's default system prompt included; LLaMA-Factory's named
    `smollm2` template differs in one token (a full stop after that system prompt). Both train the
    newline after `<|im_end|>` that the chat templates put between turns."""
    try:
        python = ensure_venv()
    except PeerUnavailable as exc:
        return {"error": str(exc)}
    rows = [json.loads(line) for line in data.read_text().splitlines()[: args.examples]]
    model = model_directory(args.model)
    template = getattr(args, "llamafactory_template", None)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(rows, Path(tmp) / "data")
        config = Path(tmp) / "train.yaml"
        config.write_text(to_yaml(llamafactory_config(
            model=model, dataset_dir=Path(tmp) / "data", output_dir=Path(tmp) / "run", template=template,
            steps=args.steps, micro_batch_size=args.micro_batch_size, max_seq_len=args.max_seq_len)))
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   HF_DATASETS_CACHE=str(Path(tmp) / "datasets-cache"))
        try:
            proc = subprocess.run([str(python), str(Path(__file__).with_name("llamafactory_child.py")), str(config)],
                                  capture_output=True, text=True, env=env, cwd=tmp, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"llamafactory-cli train did not finish within {timeout_s} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT)), None)
    if proc.returncode != 0 or line is None:
        return {"error": f"llamafactory-cli train, exit status {proc.returncode}: "
                         f"{failure_reason(proc.stderr + proc.stdout)}"}
    result = json.loads(line[len(RESULT):])
    if not result["trained_tokens"] or not result["seconds"]:
        return {"error": f"llamafactory-cli train finished without training a token: {result}"}
    result["tokens_per_s"] = result["trained_tokens"] / result["seconds"]
    result["notes"] = install_notes() + result.get("notes", [])
    return result
