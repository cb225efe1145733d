"""The `tunesmith` command line: one Typer app, one verb per pipeline stage.

Each verb builds its stage's typed config (YAML file, then flags, then `--set` overrides) and
calls that stage's `run(cfg)`, the same function the Python API exposes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from tunesmith import __version__
from tunesmith.config import StrictModel, config_to_yaml, load_config
from tunesmith.errors import TunesmithError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune an open LLM on your examples, check it, export it and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Generate, prepare and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.", exists=False)
SetOpt = typer.Option(None, "--set", help="Override a config key: --set section.key=value (repeatable).")
PrintConfigOpt = typer.Option(False, "--print-config", help="Print the resolved config with defaults and exit.")


def resolve_config(
    cls: type[StrictModel],
    config: Optional[Path],
    sets: Optional[list[str]],
    print_config: bool,
    **values: Any,
) -> StrictModel:
    """Load a stage config; with --print-config, print it and exit 0."""
    cfg = load_config(cls, config, sets or (), values)
    if print_config:
        typer.echo(config_to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """tunesmith: data -> train -> eval -> merge -> export -> serve."""


# --------------------------------------------------------------------------- data


@data_app.command("demo")
def data_demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory to write train/test/dirty files to."),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives byte-identical files."),
    train_size: Optional[int] = typer.Option(None, help="Number of training conversations."),
    test_size: Optional[int] = typer.Option(None, help="Number of held-out test conversations."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Write the demo support-ticket triage dataset (ticket text -> JSON category/priority/summary)."""
    from tunesmith.config import DemoDataConfig
    from tunesmith.data import demo

    cfg = resolve_config(
        DemoDataConfig, config, sets, print_config, out=out, seed=seed, train_size=train_size, test_size=test_size
    )
    written = demo.run(cfg)
    for name, count in written.items():
        console.print(f"wrote {count:>5} rows  {name}")


InputsArg = typer.Argument(None, help="Example files: .jsonl .json .csv .parquet .txt, each optionally .gz.", show_default=False)
FormatOpt = typer.Option(None, "--format", help="Input format (default auto): openai, alpaca, sharegpt, prompt_completion, text, preference, kto.")
MapOpt = typer.Option(None, "--map", help="Rename an input field, yours=ours (repeatable), e.g. --map question=instruction.")
PiiOpt = typer.Option(None, "--pii", help="Personal data and secrets: redact (default), drop or off.")
ModelOpt = typer.Option(None, "--model", help="Count tokens with this model's tokenizer and chat template (a directory, hub id or `default`).")
MaxSeqLenOpt = typer.Option(None, "--max-seq-len", help="Token limit for --model (default 2048).")


def _field_map(pairs: Optional[list[str]]) -> Optional[dict[str, str]]:
    """--map yours=ours pairs as a dict; None when none were given, so the YAML's map stands."""
    from tunesmith.errors import ConfigError

    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        yours, sep, ours = pair.partition("=")
        if not sep or not yours.strip() or not ours.strip():
            raise ConfigError(f"--map {pair!r} is not yours=ours", hint="example: --map question=instruction")
        mapping[yours.strip()] = ours.strip()
    return mapping


class _RecordProgress:
    """A transient stderr line with the records read so far and the rate, for long data runs."""

    def __enter__(self):
        import time

        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._clock, self._start = time.perf_counter, time.perf_counter()
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                             console=err_console, transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task("reading examples", total=None)
        return self

    def __call__(self, records: int) -> None:
        rate = records / max(self._clock() - self._start, 1e-9)
        self._bar.update(self._task, description=f"{records:,} examples read, {rate:,.0f}/s")

    def __exit__(self, *exc_info) -> None:
        self._bar.__exit__(*exc_info)


def _split_shares(text: Optional[str]) -> dict[str, float]:
    from tunesmith.errors import ConfigError

    if text is None:
        return {}
    parts = text.split(",")
    try:
        shares = [float(p) for p in parts]
    except ValueError:
        shares = []
    if len(shares) != 3:
        raise ConfigError(f"--split {text!r} is not three shares TRAIN,VAL,TEST", hint="example: --split 0.8,0.1,0.1")
    return dict(zip(("split.train", "split.val", "split.test"), shares))


@data_app.command("prepare")
def data_prepare(
    inputs: Optional[list[Path]] = InputsArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory."),
    format: Optional[str] = FormatOpt,
    map: Optional[list[str]] = MapOpt,
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Fail, writing nothing, if any example is invalid."),
    pii: Optional[str] = PiiOpt,
    dedup_threshold: Optional[float] = typer.Option(None, "--dedup-threshold", help="Near-duplicate similarity (default 0.85)."),
    model: Optional[str] = ModelOpt,
    max_seq_len: Optional[int] = MaxSeqLenOpt,
    overlong: Optional[str] = typer.Option(None, "--overlong", help="Examples over --max-seq-len: drop (default) or truncate."),
    split: Optional[str] = typer.Option(None, "--split", help="Train,val,test shares (default 0.9,0.05,0.05)."),
    stratify_by: Optional[str] = typer.Option(None, "--stratify-by", help="Input field whose values keep their share in every split."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Split seed; the same seed gives byte-identical files."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Validate, clean, deduplicate and split example files into train/val/test JSONL with a report."""
    from tunesmith.config import DataPrepareConfig
    from tunesmith.data import prepare

    cfg = resolve_config(
        DataPrepareConfig, config, sets, print_config,
        inputs=[str(p) for p in inputs] if inputs else None, out=out, format=format, map=_field_map(map),
        strict=strict, pii=pii, overlong=overlong, max_seq_len=max_seq_len, seed=seed,
        **{"dedup.threshold": dedup_threshold, "model.path": model, "split.stratify_by": stratify_by},
        **_split_shares(split),
    )
    with _RecordProgress() as progress:
        result = prepare.run(cfg, progress=progress)
    counts = result.counts
    splits = counts["splits"]
    console.print(f"kept {counts['kept']:,} of {counts['read']:,} examples: train {splits['train']:,}, "
                  f"val {splits['val']:,}, test {splits['test']:,}")
    for rule, n in counts["rejected"].items():
        console.print(f"  rejected {n:>6,}  {rule}")
    if counts["pii"]:
        console.print("  redacted " + ", ".join(f"{kind} {n}" for kind, n in counts["pii"].items()))
    if counts["truncated"]:
        console.print(f"  truncated {counts['truncated']:,} to --max-seq-len")
    console.print(f"wrote {result.out}/ (report.md, manifest.json, rejected.jsonl)")


@data_app.command("inspect")
def data_inspect(
    inputs: Optional[list[Path]] = InputsArg,
    model: Optional[str] = ModelOpt,
    max_seq_len: Optional[int] = MaxSeqLenOpt,
    format: Optional[str] = FormatOpt,
    map: Optional[list[str]] = MapOpt,
    pii: Optional[str] = PiiOpt,
    line: Optional[int] = typer.Option(None, "--line", help="Render the example at this line of the first file."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Check example files without writing anything: findings by rule, lengths, and one example
    rendered through the chat template with the trained tokens marked."""
    from tunesmith.config import DataInspectConfig
    from tunesmith.data import inspect

    cfg = resolve_config(
        DataInspectConfig, config, sets, print_config,
        inputs=[str(p) for p in inputs] if inputs else None, format=format, map=_field_map(map), pii=pii,
        max_seq_len=max_seq_len, line=line, **{"model.path": model},
    )
    with _RecordProgress() as progress:
        result = inspect.run(cfg, progress=progress)
    inspect.print_result(result, console)


# --------------------------------------------------------------------------- train


@app.command("train")
def train(
    config: Optional[Path] = typer.Argument(None, help="Training config YAML (see examples/configs/)."),
    sets: Optional[list[str]] = SetOpt,
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue from a checkpoint: `latest`, or a checkpoints/step-* directory.",
    ),
    print_config: bool = PrintConfigOpt,
) -> None:
    """Fine-tune a model with LoRA, QLoRA or full fine-tuning (also under torchrun / accelerate launch)."""
    from tunesmith.config import TrainConfig
    from tunesmith.train import sft

    cfg = resolve_config(TrainConfig, config, sets, print_config)
    resume_arg = True if resume == "latest" else resume
    result = sft.run(cfg, resume=resume_arg, console=err_console)
    if os.environ.get("RANK", "0") != "0":
        return  # in a distributed run, rank 0 reports
    if result.stopped_early:
        console.print(f"stopped early at step {result.steps}; best validation loss {result.best_val_loss:.4f}")
    console.print(f"done: {result.steps} steps; adapter and metrics in {result.output_dir}")


# --------------------------------------------------------------------------- serve


def _adapter_specs(specs: Optional[list[str]]) -> Optional[dict[str, str]]:
    """--adapter NAME=PATH (or just PATH, named after its run directory) as {name: path}."""
    from tunesmith.errors import ConfigError

    if not specs:
        return None
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            run_dir = Path(spec).expanduser().resolve()
            name, path = (run_dir.parent.name if run_dir.name == "adapter" else run_dir.name), spec
        if not name or not path:
            raise ConfigError(f"--adapter {spec!r} is not NAME=PATH", hint="example: --adapter support=runs/sft")
        if name in adapters:
            raise ConfigError(f"two adapters are named {name!r}", hint="give each --adapter a distinct NAME=")
        adapters[name] = path
    return adapters


@app.command("serve")
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base or merged model: directory, hub id or `default`."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="NAME=PATH of a run or adapter directory (repeatable); PATH alone uses the directory's name."),
    adapter_root: Optional[Path] = typer.Option(None, "--adapter-root", help="Directory runtime-loaded adapters must live under (needs --api-key)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default 8000; 0 picks a free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY (default: $TUNESMITH_API_KEY)."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Sequences decoded together (default 32)."),
    max_loaded_adapters: Optional[int] = typer.Option(None, "--max-loaded-adapters", help="Adapters kept in memory, least recently used evicted (default 8)."),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="Largest request body (default 1 MiB)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="Load the base in 4bit or 8bit (bitsandbytes)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Name clients use for the base model."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda when present)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API, batching requests."""
    from tunesmith.config import ServeConfig

    cfg = resolve_config(
        ServeConfig, config, sets, print_config,
        adapters=_adapter_specs(adapter), adapter_root=adapter_root, host=host, port=port, api_key=api_key,
        max_batch_size=max_batch_size, max_loaded_adapters=max_loaded_adapters, max_body_bytes=max_body_bytes,
        served_model_name=served_model_name, device=device,
        **{"model.path": model, "model.quantization": quantization},
    )
    from tunesmith.serve.server import run

    run(cfg, announce=lambda line: err_console.print(line, highlight=False, soft_wrap=True))


# --------------------------------------------------------------------------- eval, merge, export, check

export_app = typer.Typer(help="Export a tuned model as GGUF for llama.cpp, or for Ollama.", no_args_is_help=True)
app.add_typer(export_app, name="export")
check_app = typer.Typer(help="Consistency checks between training, serving and exports.", no_args_is_help=True)
app.add_typer(check_app, name="check")


def _say(text: str) -> None:
    """Stage progress lines as plain text: they quote tokens and paths that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _say_err(text: str) -> None:
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Training run dir, adapter dir, model dir or hub id."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Test set: OpenAI chat JSONL; the last assistant message is the reference."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for metrics.json, samples.jsonl, report.md/html and charts."),
    compare_base: Optional[bool] = typer.Option(None, "--compare-base/--no-compare-base", help="Also evaluate the base model and compare."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model to compare with (default: the run's base)."),
    json_fields: Optional[str] = typer.Option(None, "--json-fields", help="Score these fields of JSON answers, e.g. category,priority."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="JSON Schema the answers must satisfy."),
    labels: Optional[bool] = typer.Option(None, "--labels/--no-labels", help="Score whole answers as class labels (default: auto)."),
    regression: Optional[Path] = typer.Option(None, "--regression", help="JSONL of prompts the base handled well."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of an LLM judge."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model name to ask at --judge-url."),
    lm_eval: Optional[str] = typer.Option(None, "--lm-eval", help="lm-evaluation-harness tasks, comma-separated (needs lm-eval)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N examples."),
    preference: Optional[Path] = typer.Option(None, "--preference", help="Held-out preference pairs: accuracy and margin, base vs tuned."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation length limit (default 256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompts generated together (default 8)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Score a tuned model on a test set (and against its base): accuracy, F1, JSON validity, BLEU, chrF,
    ROUGE-L, perplexity, stop rate; writes a report with charts."""
    from rich.table import Table

    from tunesmith.config import EvalConfig
    from tunesmith.eval import run as eval_run

    cfg = resolve_config(
        EvalConfig, config, sets, print_config,
        model=model, data=data, out=out, compare_base=compare_base, base=base, json_fields=json_fields,
        json_schema=json_schema, labels=labels, regression=regression, lm_eval_tasks=lm_eval, limit=limit,
        preference=preference,
        **{"judge.url": judge_url, "judge.model": judge_model, "generation.max_new_tokens": max_new_tokens,
           "generation.batch_size": batch_size},
    )
    result = eval_run.run(cfg, say=_say_err)
    table = Table(title=f"{result['model']} on {result['examples']} examples")
    table.add_column("metric")
    compare = "base" in result
    for column in (("base", "tuned", "delta") if compare else ("value",)):
        table.add_column(column, justify="right")
    for name, value in result["tuned"].items():
        if compare:
            delta = result["delta"].get(name)
            table.add_row(name, f"{result['base'][name]:.4g}", f"{value:.4g}", "" if delta is None else f"{delta:+.4g}")
        else:
            table.add_row(name, f"{value:.4g}")
    console.print(table)
    if compare:
        wins = result["win_rate"]
        console.print(f"per-example ({wins['metric']}): tuned better {wins['tuned_win_rate']:.0%}, "
                      f"base better {wins['base_win_rate']:.0%}, ties {wins['tie_rate']:.0%}")
    if "regression" in result:
        console.print(f"regressions: {result['regression']['tuned_failed']} of {result['regression']['prompts']} "
                      "prompts the base handled well now fail")
    console.print(f"wrote {cfg.out}/ (metrics.json, samples.jsonl, report.md, report.html)")


@app.command("merge")
def merge_cmd(
    run_dir: Optional[str] = typer.Argument(None, help="Training run directory or adapter directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the merged model."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model to merge into (default: the run's base)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (16-bit on GPU, fp32 on CPU), fp32, bf16 or fp16."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Merge a LoRA/QLoRA adapter into an unquantised copy of its base and check the logits still match."""
    from tunesmith.config import MergeConfig
    from tunesmith.export import merge

    cfg = resolve_config(MergeConfig, config, sets, print_config, run=run_dir, out=out, base=base, dtype=dtype)
    merge.run(cfg, say=_say)


def _export(fmt: str, source, out, quant, ollama, name, system_prompt, ollama_template, base, config, sets,
            print_config) -> None:
    from tunesmith.config import ExportConfig
    from tunesmith.export import run as export_run

    cfg = resolve_config(
        ExportConfig, config, sets, print_config, format=fmt, source=source, out=out, quant=quant, ollama=ollama,
        name=name, system_prompt=system_prompt, ollama_template=ollama_template, base=base,
    )
    result = export_run.run(cfg, say=_say)
    if not result["ok"]:
        failures = result.get("verification", {}).get("failures", [])
        if not result.get("parity", {}).get("ok", True):
            failures.append("the exported prompt format differs from training (see the parity report above)")
        err_console.print("export check failed: " + "; ".join(failures), style="bold red", markup=False)
        raise typer.Exit(1)


_SourceArg = typer.Argument(None, help="Training run dir, adapter dir or merged model dir.")
_QuantOpt = typer.Option(None, "--quant", "-q", help="f16 (default), bf16, f32, q8_0, q4_0; K-quants (q4_k_m...) need llama-cpp-python.")
_NameOpt = typer.Option(None, "--name", help="Model name in the GGUF metadata and the Ollama tag.")
_SystemOpt = typer.Option(None, "--system-prompt", help="Default system prompt (Modelfile SYSTEM).")
_TemplateOpt = typer.Option(None, "--ollama-template", help="Use this Go TEMPLATE file instead of the derived one.")
_BaseOpt = typer.Option(None, "--base", help="Base model of the adapter (default: the run's base).")


@export_app.command("gguf")
def export_gguf(
    source: Optional[str] = _SourceArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output FILE.gguf (or a directory)."),
    quant: Optional[str] = _QuantOpt,
    ollama: Optional[bool] = typer.Option(None, "--ollama/--no-ollama", help="Also write an Ollama Modelfile next to the GGUF."),
    name: Optional[str] = _NameOpt,
    system_prompt: Optional[str] = _SystemOpt,
    ollama_template: Optional[Path] = _TemplateOpt,
    base: Optional[str] = _BaseOpt,
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Write a GGUF file (merging the adapter first), verify it, and check its prompt format matches training."""
    _export("gguf", source, out, quant, ollama, name, system_prompt, ollama_template, base, config, sets, print_config)


@export_app.command("ollama")
def export_ollama(
    source: Optional[str] = _SourceArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory for the GGUF and the Modelfile."),
    quant: Optional[str] = _QuantOpt,
    name: Optional[str] = _NameOpt,
    system_prompt: Optional[str] = _SystemOpt,
    ollama_template: Optional[Path] = _TemplateOpt,
    base: Optional[str] = _BaseOpt,
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Write a GGUF and an Ollama Modelfile whose TEMPLATE renders exactly as training did."""
    _export("ollama", source, out, quant, None, name, system_prompt, ollama_template, base, config, sets, print_config)


@check_app.command("parity")
def check_parity(
    source: Optional[str] = typer.Argument(None, help="Training run dir, adapter dir, model dir or export dir."),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="GGUF file to check (default: the export dir's)."),
    modelfile: Optional[Path] = typer.Option(None, "--modelfile", help="Ollama Modelfile to check."),
    data: Optional[Path] = typer.Option(None, "--data", help="Also check the first conversations of this JSONL."),
    limit: Optional[int] = typer.Option(None, "--limit", help="How many conversations of --data (default 8)."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Default system prompt served with the model."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Render the same conversations through training, serving, the GGUF and the Modelfile; exit 1 on any difference."""
    from tunesmith.config import ParityConfig
    from tunesmith.export import parity

    cfg = resolve_config(ParityConfig, config, sets, print_config, source=source, gguf=gguf, modelfile=modelfile,
                         data=data, limit=limit, system_prompt=system_prompt)
    report = parity.run(cfg, say=_say)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- quickstart


@app.command("quickstart")
def quickstart(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where every stage writes (default ./quickstart-out)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model: `default` (the embedded demo model), a directory or a hub id."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: 150 on the demo model, else 1 epoch)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Skip starting the server at the end."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """The whole lifecycle on the demo ticket-triage task: prepare, train, evaluate, merge, export, serve."""
    from tunesmith import quickstart as tour
    from tunesmith.config import QuickstartConfig

    cfg = resolve_config(QuickstartConfig, config, sets, print_config, out=out, model=model, steps=steps,
                         overwrite=overwrite or None, serve=False if no_serve else None)
    tour.run(cfg, say=lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True))


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: user errors print cleanly and exit 2."""
    if not sys.stderr.isatty():
        # Per-file "Loading weights" bars are noise in logs and CI output; tunesmith reports
        # its own progress for long work.
        # (transformers reads this variable when it is first imported).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app(args=argv, prog_name="tunesmith")
    except TunesmithError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), exc.render()), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
