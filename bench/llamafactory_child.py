"""Runs `llamafactory-cli train CONFIG` inside LLaMA-Factory's own environment and prints one
`RESULT {json}` line for bench/train_throughput.py (nothing here imports tunesmith).

    LLAMAFACTORY_PYTHON bench/llamafactory_child.py CONFIG.yaml

It calls the console script's entry point in this process, with these observations added and
nothing else changed: the time of `Trainer.train` (the training loop, as for the other
variants), the tokens carrying loss in each micro-batch `Trainer.training_step` trains on
(labels other than -100 after a row's first position), and the same count over LLaMA-Factory's
whole tokenised and packed dataset, so the parent can check that it trains the tokens tunesmith
trains, and the template it used. Peak memory is this process's VmHWM. When torchaudio cannot
be imported (see `import_or_stand_in`), a stand-in takes its place and the result says so.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import time
import types

from child_runs import RESULT, peak_rss_mb, trained_in  # standard library only, like this file


class Unusable(types.ModuleType):
    """Stands in for a module that cannot be imported here: importing it succeeds, using it fails
    with the original error."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self._reason = reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__} cannot be used here: {self._reason}")


def import_or_stand_in(name: str, notes: list[str]) -> None:
    """LLaMA-Factory imports torchaudio when it starts (for audio inputs, which text training never
    has). PyPI's torchaudio is built against CUDA torch and fails to load with the CPU build; then a
    stand-in that fails on any use takes its place, and the output says so."""
    try:
        __import__(name)
    except (ImportError, OSError, RuntimeError) as exc:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if exc.__cause__ is not None:  # torch's "Could not load this library" hides the missing dependency
            reason += f" ({type(exc.__cause__).__name__}: {exc.__cause__})".splitlines()[0]
        sys.modules[name] = Unusable(name, reason)
        notes.append(f"{name} does not import in LLaMA-Factory's environment ({reason}); LLaMA-Factory imports it "
                     "at start-up for audio inputs only, so a stand-in that fails on any use took its place")


def main() -> None:
    config = sys.argv[1]
    notes: list[str] = []
    import_or_stand_in("torchaudio", notes)
    import transformers
    from llamafactory import cli
    from llamafactory.train.sft import workflow

    seen = {"trained_tokens": 0, "seconds": 0.0, "dataset_trained_tokens": None, "template": None, "notes": notes}
    train, training_step = transformers.Trainer.train, transformers.Trainer.training_step
    get_dataset, get_template = workflow.get_dataset, workflow.get_template_and_fix_tokenizer

    def timed_train(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return train(self, *args, **kwargs)
        finally:
            seen["seconds"] += time.perf_counter() - start

    def counted_step(self, model, inputs, *args, **kwargs):
        seen["trained_tokens"] += int((inputs["labels"][:, 1:] != -100).sum())
        return training_step(self, model, inputs, *args, **kwargs)

    def counted_dataset(*args, **kwargs):
        module = get_dataset(*args, **kwargs)
        seen["dataset_trained_tokens"] = sum(trained_in(row["labels"]) for row in module["train_dataset"])
        return module

    def named_template(tokenizer, data_args):
        template = get_template(tokenizer, data_args)
        seen["template"] = data_args.template or "parsed from the tokenizer's chat template"
        return template

    transformers.Trainer.train, transformers.Trainer.training_step = timed_train, counted_step
    workflow.get_dataset, workflow.get_template_and_fix_tokenizer = counted_dataset, named_template
    sys.argv = ["llamafactory-cli", "train", config]
    cli.main()
    print(RESULT + json.dumps({**seen, "peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
