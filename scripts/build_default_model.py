"""Build tunesmith's embedded default model from text that ships with Python.

    python scripts/build_default_model.py --out src/tunesmith/models/default

The corpus is the documentation inside the running CPython installation (the `pydoc` help
topics and the docstrings of the standard library's modules, classes and functions), licensed
under the PSF License. No network is used. A share of the docstrings is also rendered as
question/answer conversations through the model's chat template, so the chat special tokens
have trained embeddings and the base model can be fine-tuned in chat format.

The script trains a byte-level BPE tokenizer, pretrains a small Llama model on CPU, measures
perplexity on held-out documents, and writes a Hugging Face model directory with a model card.
Everything is seeded; the same Python version, library versions and thread count reproduce the
same weights.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

import pydoc_data.topics
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, IM_START, IM_END = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
)
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# ChatML, the template family most open chat models use. The BOS token opens the conversation;
# each turn ends with <|im_end|>, which is also a stop token in the generation config.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QUESTIONS = [
    "What does `{name}` do?",
    "Explain `{name}`.",
    "How do I use {name}?",
    "Describe the Python function {name}.",
    "what is {name} for",
]


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if name.endswith(".py"):
                files.append(Path(dirpath) / name)
    return files


def _docstrings(path: Path, module: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    doc = ast.get_docstring(tree)
    if doc:
        out.append((module, doc))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                out.append((f"{module}.{node.name}", doc))
    return out


def collect_corpus(seed: int) -> tuple[list[str], list[str], list[dict]]:
    """Return (plain documents, chat documents as message lists) with a held-out split."""
    rng = random.Random(seed)
    documents: list[tuple[str, str]] = []
    for topic in sorted(pydoc_data.topics.topics):
        documents.append((f"topic:{topic}", pydoc_data.topics.topics[topic].strip()))
    root = Path(sysconfig.get_paths()["stdlib"])
    qa_pairs: list[tuple[str, str]] = []
    for path in _stdlib_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        entries = _docstrings(path, module)
        if not entries:
            continue
        text = "\n\n".join(f"{name}\n\n{doc}" for name, doc in entries)
        documents.append((f"module:{module}", text))
        qa_pairs.extend((name, doc.split("\n\n")[0].strip()) for name, doc in entries[1:])

    def held_out(doc_id: str) -> bool:
        return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 20 == 0

    train_docs = [text for doc_id, text in documents if not held_out(doc_id)]
    val_docs = [text for doc_id, text in documents if held_out(doc_id)]
    chats = []
    for name, answer in qa_pairs:
        if held_out(name) or len(answer) < 40:
            continue
        question = rng.choice(QUESTIONS).format(name=name)
        chats.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    stats = {
        "documents": len(documents),
        "train_documents": len(train_docs),
        "heldout_documents": len(val_docs),
        "chat_documents": len(chats),
        "train_chars": sum(map(len, train_docs)),
        "heldout_chars": sum(map(len, val_docs)),
    }
    return train_docs, val_docs, chats, stats


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama 3: plain encoding starts with BOS; byte-level offsets stay untrimmed.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def token_stream(tokenizer, docs: list[str], chats: list[list[dict]]) -> list[int]:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    pieces: list[list[int]] = []
    for text in docs:
        pieces.append(tokenizer(text)["input_ids"] + [eos])
    for messages in chats:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        pieces.append(tokenizer(rendered, add_special_tokens=False)["input_ids"] + [eos])
    return pieces


def chunk(pieces: list[list[int]], seq_len: int, rng: random.Random) -> torch.Tensor:
    order = list(range(len(pieces)))
    rng.shuffle(order)
    flat = [t for i in order for t in pieces[i]]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def perplexity(model, data: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        out = model(input_ids=x, labels=x)
        n = x.numel() - x.shape[0]
        total += out.loss.item() * n
        count += n
    model.train()
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("src/tunesmith/models/default"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=704)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    t0 = time.time()
    train_docs, val_docs, chats, corpus_stats = collect_corpus(args.seed)
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    train_pieces = token_stream(tokenizer, train_docs, chats)
    val_data = chunk(token_stream(tokenizer, val_docs, []), args.seq_len, random.Random(0))
    train_tokens = sum(map(len, train_pieces))
    print(f"corpus: {corpus_stats}; train tokens {train_tokens}; held-out sequences {len(val_data)}", flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    initial_ppl = perplexity(model, val_data, args.batch_size)
    data = chunk(train_pieces, args.seq_len, rng)
    cursor, epoch, log = 0, 0, []
    model.train()
    for step in range(args.steps):
        if cursor + args.batch_size > len(data):
            data, cursor, epoch = chunk(train_pieces, args.seq_len, rng), 0, epoch + 1
        x = data[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == args.steps - 1:
            elapsed = time.time() - t0
            log.append({"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step), "grad_norm": round(grad_norm, 3)})
            print(f"step {step}/{args.steps} loss {loss.item():.3f} lr {lr_at(step):.2e} {elapsed:.0f}s", flush=True)

    final_ppl = perplexity(model, val_data, args.batch_size)
    minutes = (time.time() - t0) / 60
    tokens_seen = args.steps * args.batch_size * args.seq_len
    print(f"held-out perplexity {initial_ppl:.1f} -> {final_ppl:.2f} in {minutes:.1f} min", flush=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    ).save_pretrained(out)
    weights = out / "model.safetensors"
    facts = {
        "parameters": params,
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "heldout_perplexity": round(final_ppl, 3),
        "initial_heldout_perplexity": round(initial_ppl, 1),
        "train_tokens_per_epoch": train_tokens,
        "tokens_seen": tokens_seen,
        "epochs_started": epoch + 1,
        "minutes": round(minutes, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "corpus": corpus_stats,
        "args": {k: str(v) for k, v in vars(args).items()},
        "log": log,
    }
    (out / "training_log.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out / "README.md").write_text(model_card(facts, config), encoding="utf-8")
    print(json.dumps({k: v for k, v in facts.items() if k not in ("log", "args")}, indent=2))


def model_card(f: dict, config: LlamaConfig) -> str:
    a = f["args"]
    c = f["corpus"]
    return f"""# tunesmith-demo-4m — the embedded default model

**This is a demo model.** It is tiny ({f['parameters']:,} parameters), was trained for about
{f['minutes']} minutes of wall-clock time on a 2-core CPU that it shared with other jobs, and knows little beyond the shape of English text about
Python. It exists so that every tunesmith stage — data preparation, fine-tuning, evaluation,
merging, GGUF export and serving — runs offline on a laptop in minutes. Do not use it for
anything that matters; use it to see the pipeline work, then switch to a real model.

| | |
|---|---|
| architecture | Llama (`LlamaForCausalLM`): {config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} attention heads / {config.num_key_value_heads} key-value heads, MLP {config.intermediate_size}, RoPE, RMSNorm, tied embeddings |
| parameters | {f['parameters']:,} |
| weights | `model.safetensors`, float32, {f['weights_bytes'] / 1e6:.1f} MB |
| context | trained on {a['seq_len']}-token sequences; `max_position_embeddings` {config.max_position_embeddings} |
| tokenizer | byte-level BPE, {config.vocab_size} tokens, trained on the same corpus |
| special tokens | BOS `{BOS}`, EOS `{EOS}`, pad `{PAD}` (three distinct ids), chat turns `{IM_START}` / `{IM_END}` |
| chat template | ChatML; generation stops at `{IM_END}` or `{EOS}` (`generation_config.json`) |
| held-out perplexity | **{f['heldout_perplexity']}** on {c['heldout_documents']} held-out documents (untrained: {f['initial_heldout_perplexity']}) |
| licence of the weights | PSF License 2.0, like the corpus |

## Corpus

The documentation that ships inside CPython {f['python']}: the `pydoc` help topics
(`pydoc_data.topics`) and the docstrings of the standard library's modules, classes and
functions, read with `ast` from the installed sources (tests, IDLE and demos excluded). That text
is © Python Software Foundation, under the PSF License Agreement. {c['documents']} documents,
{c['train_chars']:,} characters for training; one in twenty documents (chosen by a hash of its name)
is held out for perplexity. {c['chat_documents']} docstrings are also rendered as one-turn
conversations ("What does `json.dumps` do?" → its first paragraph) through the chat template, so
the chat tokens are trained.

## Training recipe

Reproduce with `python scripts/build_default_model.py --out src/tunesmith/models/default`
(seed {a['seed']}, {a['threads']} CPU threads, torch {f['torch']}). AdamW (β = 0.9, 0.95, weight decay
0.1 on matrices), peak learning rate {a['lr']}, {a['warmup']} warm-up steps then cosine decay to
10%, gradient clipping at 1.0, {a['steps']} steps of {a['batch_size']} × {a['seq_len']} tokens
({f['tokens_seen']:,} tokens, about {f['tokens_seen'] / f['train_tokens_per_epoch']:.1f} passes over
{f['train_tokens_per_epoch']:,} training tokens). The loss curve is in `training_log.json`.

## Intended use

Tests, tutorials and the `tunesmith quickstart` tour. Its answers are not reliable; it was never
trained to follow instructions or to be safe.
"""


if __name__ == "__main__":
    sys.exit(main())
