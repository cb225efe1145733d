"""One-GPU check of tunesmith's training: LoRA MFU, QLoRA peak memory, a DPO step, one table.

Run through `bash bench/gpu/run.sh` on one H100/H200 (about 6 minutes, nothing downloaded): the
models are written here from their published config.json shapes with random weights (safetensors),
and every measurement is a real `python -m tunesmith train` process on them, so what is measured
is tunesmith's own training code. `--device cpu --tiny` runs the same steps on small shapes on CPU
(a minute), to check the script itself.

MFU (model FLOPs utilisation) = model FLOPs per second / the GPU's peak dense bf16 FLOPs. Model
FLOPs per step, for `positions` token positions processed and `trained` positions at which the
output head runs (tunesmith computes the head only there):
  frozen linear weights N_base (all decoder linears): forward 2*N_base, backward 2*N_base
      (gradient of the activations only; frozen weights get no weight gradient)   -> 4*N_base*positions
  LoRA weights N_lora: forward 2, backward 4 (activations and weights)           -> 6*N_lora*positions
  causal attention (QK^T and scores x V over seq/2 keys on average): forward 2 matmuls x 2 FLOPs
      x q_width x seq/2 per layer, backward twice the forward                     -> 6*layers*q_width*seq*positions
  output head (hidden x vocabulary, frozen): forward 2*h*V, backward 2*h*V        -> 4*h*V*trained
Embedding lookups, norms and activations are not counted (they are not matrix products).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from tunesmith.plan.shapes import KNOWN_SHAPES, ModelShape, shape_from_config  # noqa: E402

# Peak dense bf16 tensor FLOPs (no sparsity), from NVIDIA's data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12, "RTX 4090": 165e12}

SHAPES = {
    "qwen2.5-0.5b": KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"],
    "llama-3.1-8b": KNOWN_SHAPES["meta-llama/Llama-3.1-8B-Instruct"],
}
# CPU check: the same architectures, scaled down so a step takes a second.
TINY = {
    "qwen2.5-0.5b": dict(SHAPES["qwen2.5-0.5b"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=256, vocab_size=8192),
    "llama-3.1-8b": dict(SHAPES["llama-3.1-8b"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=256, vocab_size=8192),
}
WORDS = ("ticket order refund delivery invoice account password login error screen payment card shipping "
         "address update cancel request support agent customer priority urgent billing subscription plan "
         "monthly charge device app crash network slow report issue resolved waiting response email phone").split()


# --------------------------------------------------------------------------- setup


def write_model(name: str, config: dict, out: Path, device: str) -> Path:
    """A model directory from a config.json shape with random weights (safetensors) and the
    embedded demo model's tokenizer (its token ids are valid in any of these vocabularies)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = out / name
    if (target / "model.safetensors").exists() or (target / "model.safetensors.index.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               max_position_embeddings=32768, **values)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(target, max_shard_size="5GB")
    del model
    default = REPO / "src" / "tunesmith" / "models" / "default"
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(default / file, target / file)
    if device == "cuda":
        torch.cuda.empty_cache()
    return target


def write_text_data(path: Path, documents: int, seq: int, seed: int = 0) -> float:
    """Plain-text rows (every token trained) of just under `seq` tokens each, so packing puts one
    per row; returns the mean tokens per document (`data prepare` refuses rows over `seq`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "src" / "tunesmith" / "models" / "default")
    rng = random.Random(seed)
    budget = seq - 8  # room for the end-of-sequence token and any special tokens
    lengths = []
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(documents):
            text = " ".join(rng.choice(WORDS) for _ in range(seq))  # more words than tokens fit
            encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            text = text[: encoded["offset_mapping"][budget - 1][1]]
            lengths.append(len(tokenizer(text)["input_ids"]) + 1)
            fh.write(json.dumps({"text": text}) + "\n")
    return statistics.mean(lengths)


def write_preference_data(path: Path, pairs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(pairs):
            prompt = " ".join(rng.choice(WORDS) for _ in range(60))
            chosen = " ".join(rng.choice(WORDS) for _ in range(40))
            rejected = " ".join(rng.choice(WORDS) for _ in range(40))
            fh.write(json.dumps({"prompt": f"{i} {prompt}", "chosen": chosen, "rejected": rejected}) + "\n")
    return path


# --------------------------------------------------------------------------- one training run


def train(run_dir: Path, config: Path | None, sets: list[str], device: str, timeout: int) -> dict:
    """`python -m tunesmith train` in its own process, with its peak memory recorded at exit."""
    shutil.rmtree(run_dir, ignore_errors=True)
    peak_file = run_dir.parent / f"{run_dir.name}.peak.json"
    args = [sys.executable, str(Path(__file__).with_name("peak.py")), str(peak_file), "train"]
    args += ([str(config)] if config else []) + [a for s in sets for a in ("--set", s)]
    args += ["--set", f"output_dir={run_dir}"]
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"ok": False, "error": f"timed out after {timeout} s\n{(exc.output or b'')[-1500:]!r}",
                "wall_s": timeout}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"ok": False, "error": done.stdout[-1500:], "wall_s": wall}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    peak = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
    return {"ok": True, "metrics": [m for m in metrics if "tokens_per_s" in m], "peak": peak, "wall_s": wall,
            "log": done.stdout}


def planned_peak(config: Path | None, sets: list[str], gpu: bool, memory: str) -> float:
    """The planner's peak (GiB) for the same run on a device of `memory` (or this machine's RAM)."""
    from tunesmith.plan import PlanConfig, run

    cfg = PlanConfig(train_config=config, overrides=sets, memory=memory if gpu else None, trained_share=None)
    return run(cfg).estimate.total / 2**30


# --------------------------------------------------------------------------- FLOPs


def lora_params(shape: ModelShape, r: int) -> int:
    return shape.lora_params(r, "all-linear")


def attention_flops(shape: ModelShape, seq: int) -> float:
    """Per position, causal attention (QK^T and attention x V, about seq/2 keys each on average):
    forward 2 products x 2 FLOPs x q_width x seq/2 per layer; backward twice the forward."""
    forward = 2 * 2 * shape.q_width * (seq / 2) * shape.layers
    return 3 * forward


def step_flops(shape: ModelShape, positions: float, trained: float, r: int, seq: int) -> float:
    n_base = shape.layers * shape.layer_linear_params
    return (4 * n_base * positions + 6 * lora_params(shape, r) * positions
            + attention_flops(shape, seq) * positions + 4 * shape.hidden * shape.vocab * trained)


FORMULA = ("model FLOPs/step = 4*N_linear*P + 6*N_lora*P + 6*layers*q_width*S*P + 4*h*V*T   "
           "(P positions, T trained positions, S row length; frozen weights: forward 2N + backward 2N; "
           "LoRA: 2N + 4N; causal attention: forward 2 matmuls x 2 FLOPs x q_width x S/2 per layer, backward 2x)")


def throughput(result: dict, seq: int, doc_tokens: float, skip: int) -> tuple[float, float]:
    """(positions/s, trained tokens/s): the median over the logged steps after `skip` warm-up
    steps. Each row holds one document of `doc_tokens` tokens padded to `seq` positions, and all
    but its first token are trained, so positions = trained tokens x seq / (doc_tokens - 1)."""
    records = result["metrics"][skip:] or result["metrics"]
    trained_rate = statistics.median(r["tokens_per_s"] for r in records)
    return trained_rate * seq / (doc_tokens - 1), trained_rate


# --------------------------------------------------------------------------- the check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small shapes (for --device cpu)")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunesmith-gpu-check"))
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run (CPU, tiny shapes) to check the script")
        return 2
    gpu = args.device == "cuda"
    gpu_name = torch.cuda.get_device_name(0) if gpu else "CPU"
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else 0.0
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in gpu_name), None) if gpu else None
    memory = f"{total_gib:.1f}GiB"
    shapes = TINY if args.tiny else SHAPES
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    data.mkdir(exist_ok=True)
    seq = 256 if args.tiny else 2048
    text = data / "text.jsonl"
    doc_tokens = write_text_data(text, documents=64 if args.tiny else 160, seq=seq)
    steps = 4 if args.tiny else 10
    skip = 1 if args.tiny else 3
    timeout = 240 if gpu else 900  # per training run; on one GPU the whole check must take under 8 minutes
    rows: list[list[str]] = []
    print(f"device: {gpu_name}" + (f", {total_gib:.1f} GiB, peak bf16 {peak_flops / 1e12:.0f} TFLOP/s"
                                   if peak_flops else ""))
    print(FORMULA)

    common = [f"data.path={text}", f"train.max_seq_len={seq}", "train.packing=true", f"train.max_steps={steps}",
              "train.log_every=1", "train.eval_every=1000", "train.save_every=1000", "data.val_ratio=0",
              "lora.dropout=0.0", "lora.r=16", "train.learning_rate=1e-4"]
    if gpu:
        common += ["model.dtype=bf16", "model.attn_implementation=sdpa"]

    def record(label: str, result: dict, shape: ModelShape, sets: list[str], config: Path | None = None,
               mfu: bool = True) -> None:
        if not result["ok"]:
            print(f"{label}: FAILED\n{result['error']}")
            rows.append([label, "failed", "", "", "", "", ""])
            return
        peak = result["peak"]
        measured = peak.get("max_reserved_gib") if gpu else peak.get("max_rss_gib")
        planned = planned_peak(config, sets, gpu, memory)
        mfu_text = tps = ""
        if mfu:
            positions_s, trained_s = throughput(result, seq, doc_tokens, skip)
            tps = f"{trained_s:,.0f}"
            flops_s = step_flops(shape, positions_s, trained_s, 16, seq)
            mfu_text = f"{flops_s / peak_flops:.1%}" if peak_flops else f"{flops_s / 1e9:.1f} GFLOP/s"
        rows.append([label, "ok", tps, mfu_text, f"{measured:.2f}" if measured else "?", f"{planned:.2f}",
                     f"{result['wall_s']:.0f}"])

    # 1-2. LoRA MFU on both shapes, at the largest micro-batch the planner fits in 85% of the device
    for key in ("qwen2.5-0.5b", "llama-3.1-8b"):
        shape = shape_from_config(shapes[key], key)
        model_dir = write_model(key, shapes[key], args.out / "models", args.device)
        base = common + [f"model.path={model_dir}", "method=lora"]
        micro_batch = 8
        while gpu and micro_batch > 1 and planned_peak(
                None, base + [f"train.micro_batch_size={micro_batch}"], gpu, memory) > 0.85 * total_gib:
            micro_batch //= 2
        sets = base + [f"train.micro_batch_size={micro_batch}"]
        result = train(args.out / f"lora-{key}", None, sets, args.device, timeout)
        label = f"LoRA {key} bf16 mb{micro_batch}x{seq}" if gpu else f"LoRA {key} (tiny, cpu)"
        record(label, result, shape, sets)

    # 3. QLoRA peak memory on the 8B shape, with the example config's settings
    key = "llama-3.1-8b"
    shape = shape_from_config(shapes[key], key)
    example = REPO / "examples" / "configs" / "llama-3.1-8b-qlora-24gb.yaml"
    model_dir = args.out / "models" / key
    # The example config names its data in the shorthand form (`data: DIR`), so the data section is
    # replaced whole rather than key by key.
    qlora_sets = [f"model.path={model_dir}", f"data={{path: [{text}], val_ratio: 0}}", "train.max_steps=4",
                  "train.log_every=1", "train.eval_every=1000", "train.save_every=1000", f"train.max_seq_len={seq}"]
    try:
        import bitsandbytes  # noqa: F401
        have_bnb = gpu
    except ImportError:
        have_bnb = False
    if have_bnb:
        result = train(args.out / "qlora-8b", example, qlora_sets, args.device, timeout)
        record("QLoRA llama-3.1-8b (24 GB claim)", result, shape, qlora_sets, config=example, mfu=False)
    else:
        reason = "needs a CUDA GPU" if not gpu else "bitsandbytes is not installed (see bench/gpu/README.md)"
        print(f"QLoRA: skipped, {reason}")
        rows.append(["QLoRA llama-3.1-8b (24 GB claim)", f"skipped: {reason}", "", "", "", "", ""])

    # 4. a DPO step, when the training config has objectives
    from tunesmith.plan.config import TrainConfig

    if "objective" in TrainConfig.model_fields:
        key = "qwen2.5-0.5b"
        prefs = write_preference_data(data / "pairs.jsonl", 256)
        sets = [s for s in common if not s.startswith(("data.path=", "train.max_steps"))] + [
            f"model.path={args.out / 'models' / key}", f"data.path={prefs}", "objective=dpo", "train.max_steps=3",
            "train.micro_batch_size=4"]
        result = train(args.out / "dpo", None, sets, args.device, timeout)
        record(f"DPO {key}", result, shape_from_config(shapes[key], key), sets, mfu=False)
    else:
        reason = "this version's training config has no `objective` field"
        print(f"DPO: skipped, {reason}")
        rows.append(["DPO step", f"skipped: {reason}", "", "", "", "", ""])

    header = ["run", "status", "trained tok/s", "MFU" if peak_flops else "model FLOP/s",
              "peak GiB (reserved)" if gpu else "peak RSS GiB", "planned GiB", "wall s"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if gpu:
        print("\ngoals: LoRA MFU >= 40% on the 8B shape; QLoRA 8B peak under 24 GB (22.0 GiB usable on L4/A10)")
    (args.out / "table.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0 if all(r[1] == "ok" or r[1].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
