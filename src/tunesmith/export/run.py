"""`tunesmith export gguf|ollama`: merge if needed, write GGUF, verify it, write a Modelfile, check parity.

    tunesmith export gguf runs/sft --out exports/tickets/tickets.gguf --quant q8_0
    tunesmith export ollama runs/sft --out exports/tickets

The export directory gets `config.yaml` and `manifest.json` holding the merge parity figure, the
verification results (structure, tokenizer round-trip, next-token agreement) and the parity
report. Files are kept when a check fails, so they can be inspected; the result says `ok: false`
and the command exits 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ConfigError
from tunesmith.export.config import ExportConfig
from tunesmith.export.gguf import LLAMA_CPP_FTYPES, llama_cpp_available, llama_cpp_quantize, write_gguf
from tunesmith.export.merge import generation_config_for, merge_source
from tunesmith.export.ollama import write_modelfile
from tunesmith.export.parity import compare_paths
from tunesmith.export.probes import PROBE_CONVERSATIONS
from tunesmith.export.verify import structural_check, verify_export
from tunesmith.manifest import write_stage_record
from tunesmith.models.source import resolve_source


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"


def output_paths(cfg: ExportConfig, name: str) -> tuple[Path, Path | None, Path]:
    """(gguf file, Modelfile or None, directory for config.yaml + manifest.json)."""
    out = Path(cfg.out)
    if cfg.format == "ollama":
        return out / f"{_slug(name)}.{cfg.quant}.gguf", out / "Modelfile", out
    if out.suffix.lower() != ".gguf":
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} must be a .gguf file name or a directory")
        out = out / f"{_slug(name)}.{cfg.quant}.gguf"
    return out, (out.parent / "Modelfile" if cfg.ollama else None), out.parent


@dataclass
class ExportResult:
    """The GGUF (and Modelfile) written, and the checks' record as the manifest keeps it."""

    gguf: Path
    modelfile: Path | None
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])

    def failures(self) -> list[str]:
        failures = list(self.report.get("verification", {}).get("failures", []))
        if not self.report.get("parity", {}).get("ok", True):
            failures.append("the exported prompt format differs from training (see the parity report above)")
        return failures

    def summary(self) -> str:
        wrote = f"wrote {self.gguf}" + (f" and {self.modelfile}" if self.modelfile else "")
        return wrote if self.ok else f"{wrote}\nexport check failed: " + "; ".join(self.failures())


def run(cfg: ExportConfig, *, say: Callable[[str], None] = print) -> ExportResult:
    if cfg.quant in LLAMA_CPP_FTYPES and not llama_cpp_available():
        raise ConfigError(f"--quant {cfg.quant} is a K-quant, made by llama.cpp's quantiser, and llama-cpp-python is "
                          "not installed",
                          hint="pip install 'tunesmith[llama-cpp]' (builds llama.cpp), or use q8_0 / q4_0 / f16")
    if cfg.ollama_template is not None and not cfg.ollama_template.is_file():
        raise ConfigError(f"--ollama-template {cfg.ollama_template} does not exist")
    source = resolve_source(cfg.source, base=cfg.base)
    name = cfg.name or source.display_name
    gguf_path, modelfile_path, out_dir = output_paths(cfg, name)
    merged = merge_source(source, device=cfg.device, say=say)
    model, tokenizer = merged.model, merged.tokenizer
    generation_config = generation_config_for(merged)

    k_quant = cfg.quant in LLAMA_CPP_FTYPES
    written_path = gguf_path.with_name(f".{gguf_path.stem}.f16.gguf") if k_quant else gguf_path
    plan = write_gguf(model, tokenizer, written_path, "f16" if k_quant else cfg.quant, name, say=say)
    if k_quant:
        say(f"quantising to {cfg.quant} with llama.cpp")
        llama_cpp_quantize(written_path, gguf_path, cfg.quant)
        written_path.unlink()
        plan.path, plan.quant = gguf_path, cfg.quant

    result: dict[str, Any] = {"gguf": str(gguf_path), "quant": cfg.quant, "merge_parity": merged.parity or None}
    if cfg.verify:
        result["verification"] = verify_export(plan, model, tokenizer, min_agreement=cfg.min_agreement, say=say,
                                               check_types=not k_quant)
    else:
        result["verification"] = {"structure": structural_check(plan, check_types=not k_quant), "ok": True,
                                  "note": "agreement checks skipped (verify: false)"}
    stops = list(generation_config.eos_token_id)
    if modelfile_path is not None:
        template = cfg.ollama_template.read_text(encoding="utf-8") if cfg.ollama_template else None
        write_modelfile(modelfile_path, gguf_path, tokenizer, add_bos=plan.tokenizer.add_bos, stop_ids=stops,
                        system=cfg.system_prompt, template=template, description=name)
        say(f"wrote {modelfile_path} (run it with: ollama create {_slug(name)} -f {modelfile_path})")
        result["modelfile"] = str(modelfile_path)
    if cfg.parity:
        report = compare_paths(tokenizer, PROBE_CONVERSATIONS, generation_config=generation_config,
                               gguf_path=gguf_path, modelfile_path=modelfile_path, system_prompt=cfg.system_prompt)
        say(report.render())
        result["parity"] = report.as_dict()
    result["ok"] = result["verification"]["ok"] and result.get("parity", {}).get("ok", True)

    outputs = [gguf_path] + ([modelfile_path] if modelfile_path is not None else [])
    inputs: dict[str, Any] = {"adapter": source.adapter.adapter_dir} if source.adapter else {"model": source.weights}
    write_stage_record(out_dir, "export", cfg, inputs=inputs, outputs=outputs, extra={
        "source": str(Path(source.given).resolve()) if Path(source.given).exists() else source.given,
        "base_model": {"path": source.base or source.weights},
        "gguf": gguf_path.name if gguf_path.parent == out_dir else str(gguf_path),
        "modelfile": modelfile_path.name if modelfile_path is not None else None,
        "stop_token_ids": stops, **{k: v for k, v in result.items() if k not in ("gguf", "modelfile")},
    })
    return ExportResult(gguf_path, modelfile_path, result)


__all__ = ["output_paths", "run"]
