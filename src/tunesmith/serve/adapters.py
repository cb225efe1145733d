"""The adapters a server knows, which of them are in memory, and where they may be read from.

An adapter is *registered* once it has been validated (LoRA in safetensors, trained on this base,
rank and layers the mixed-batch forward supports, tokenizer compatible), and *loaded* while its
weights sit in the PEFT model. At most `max_loaded` are loaded; the least recently used one that
no running sequence needs is evicted to make room, and reloaded from disk when asked for again.

Everything that changes the model (`add`, `remove`, `acquire`, `release`) runs on the engine
thread, between forward passes, so no lock is held across a forward pass. The name -> adapter
map is also read from the HTTP side, under a lock.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunesmith.serve.config import ADAPTER_NAME_PATTERN
from tunesmith.errors import ModelError, ServeError
from tunesmith.models.adapters import (
    ADAPTER_WEIGHTS,
    AdapterInfo,
    check_adapter_fits,
    check_base_weights,
    find_adapter,
)
from tunesmith.models.loading import resolve_model_path
from tunesmith.serve.budget import within_budget

_NAME = re.compile(ADAPTER_NAME_PATTERN)
BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolves to: the base (adapter None) or one adapter."""

    name: str
    adapter: Optional[str]
    tokenizer: Any
    stop_ids: frozenset[int]


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter that passed every check that does not need the model's weights."""

    name: str
    info: AdapterInfo
    target: Target


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ServeError(f"invalid adapter name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_under_root(root: Optional[Path], requested: str) -> Path:
    """The adapter directory `requested` names below `root`, refusing anything that leaves it.

    `..` components are refused outright; an absolute path is accepted only when it lies under the
    root; symlinks are resolved and the result must stay under the root, and so must every file
    the adapter directory (or run directory) holds, since a symlinked weights file would read
    outside the root just as well.
    """
    if root is None:
        raise ServeError("runtime adapter loading is off: the server was started without --adapter-root")
    if not requested or "\x00" in requested:
        raise ServeError("lora_path must be a non-empty path below the adapter root")
    rel = Path(requested)
    if ".." in rel.parts:
        raise ServeError(f"lora_path {requested!r} contains '..'; give a path below the adapter root")
    root_real = root.resolve()
    if rel.is_absolute() and not (_inside(rel, root.absolute()) or _inside(rel, root_real)):
        raise ServeError(f"lora_path {requested!r} is outside the adapter root")
    candidate = rel if rel.is_absolute() else root_real / rel
    if not candidate.exists():
        raise ServeError(f"lora_path {requested!r} does not exist below the adapter root")
    real = candidate.resolve()
    if not _inside(real, root_real):
        raise ServeError(f"lora_path {requested!r} leads outside the adapter root (through a symlink)")
    for folder in (real, real / "adapter"):
        if folder.is_dir():
            for entry in folder.iterdir():
                if not _inside(entry.resolve(), root_real):
                    raise ServeError(f"{entry.name} in {requested!r} is a symlink that leads outside the adapter root")
    return real


def _names_of(model_ref: str) -> set[str]:
    names = {model_ref}
    try:
        names.add(resolve_model_path(model_ref))
    except ModelError:
        pass
    return names


def base_matches(recorded: str, served: str) -> bool:
    """Whether an adapter's recorded base model is the served one (same path, or same model name)."""
    recorded_names, served_names = _names_of(recorded), _names_of(served)
    if recorded_names & served_names:
        return True
    return bool({Path(n).name.lower() for n in recorded_names} & {Path(n).name.lower() for n in served_names})


def prepare_adapter(name: str, path: str | Path, *, base_target: Target, served_model: str,
                    generation_config, max_rank: int, allow_base_mismatch: bool) -> PreparedAdapter:
    """Validate an adapter on disk (no weights are loaded yet); raises ModelError/ServeError."""
    from tunesmith.chat.tokens import stop_token_ids

    check_name(name)
    info = find_adapter(path, allow_pickle=False)
    if not (info.adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{info.adapter_dir} has no {ADAPTER_WEIGHTS}; the server loads safetensors only")
    _check_config_types(name, info.peft_config)
    _check_weights_file(name, info.adapter_dir / ADAPTER_WEIGHTS)
    if not allow_base_mismatch and not base_matches(info.base_model, served_model):
        raise ModelError(
            f"adapter {name!r} was trained on {info.base_model}, but this server runs {served_model}",
            hint="serve it with that base model, or set allow_base_mismatch: true if they are the same weights",
        )
    if not allow_base_mismatch:
        try:
            served_path = resolve_model_path(served_model)
        except ModelError:
            served_path = served_model
        check_base_weights(info, served_path,
                           hint="serve it with the base it was trained on, or set allow_base_mismatch: true")
    config = info.peft_config
    ranks = [info.rank, *[int(r) for r in (config.get("rank_pattern") or {}).values()]]
    if min(ranks) < 1 or max(ranks) > max_rank:
        raise ModelError(f"adapter {name!r} has LoRA rank {max(ranks)}; this server allows 1 to {max_rank}",
                         hint="raise max_lora_rank")
    # PEFT's mixed-adapter batch forward handles plain LoRA only.
    if config.get("use_dora"):
        raise ModelError(f"adapter {name!r} is a DoRA adapter, which cannot share a batch with other adapters",
                         hint="merge it into the base model (`tunesmith merge`) and serve the merged model")
    if config.get("alora_invocation_tokens"):
        raise ModelError(f"adapter {name!r} is an activated LoRA (aLoRA), which tunesmith serve does not support")
    target = base_target
    if info.has_tokenizer:
        target = _adapter_target(name, info, base_target, generation_config, stop_token_ids)
    return PreparedAdapter(name=name, info=info, target=Target(name, name, target.tokenizer, target.stop_ids))


def _check_config_types(name: str, config: dict[str, Any]) -> None:
    """PEFT reads adapter_config.json without checking types; a wrong one fails deep in a load."""
    def bad(field: str, wanted: str) -> ModelError:
        return ModelError(f"adapter {name!r}: {field} in adapter_config.json is {config.get(field)!r}, not {wanted}",
                          hint="the file is damaged or hand-edited; save the adapter again")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(config.get("r")):
        raise bad("r", "an integer")
    if not isinstance(config.get("lora_alpha", 8), (int, float)) or isinstance(config.get("lora_alpha"), bool):
        raise bad("lora_alpha", "a number")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise bad("target_modules", "a name or a list of names")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        if not (isinstance(pattern, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in pattern.values())):
            raise bad(field, "a mapping of module names to numbers")


def _check_weights_file(name: str, weights: Path) -> None:
    """Read the safetensors header (not the tensors): random bytes or a truncated file is refused here."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():
                fh.get_slice(key).get_shape()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ModelError(f"adapter {name!r}: {weights.name} is not a readable safetensors file ({exc})",
                         hint="the file is damaged; save the adapter again") from None


def _adapter_target(name: str, info: AdapterInfo, base: Target, generation_config, stop_token_ids) -> Target:
    """The adapter's own tokenizer (its saved chat template is the one it was trained with)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.adapter_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the tokenizer saved with adapter {name!r}: {exc}") from None
    if tokenizer.get_vocab() != base.tokenizer.get_vocab():
        raise ModelError(
            f"adapter {name!r} was saved with a different vocabulary than the base model "
            f"({len(tokenizer)} vs {len(base.tokenizer)} tokens), so it cannot share the base's embeddings",
            hint="merge it (`tunesmith merge`) and serve the merged model",
        )
    if not getattr(tokenizer, "chat_template", None):
        return base
    # Finding the end-of-turn token renders the adapter's template: a hostile one must not hang here.
    stop_ids = within_budget(lambda: stop_token_ids(tokenizer, generation_config), what="render a probe conversation")
    return Target(name, name, tokenizer, frozenset(stop_ids))


def _check_layer_types(info: AdapterInfo, model) -> None:
    """Mixed batches work for LoRA on linear and embedding layers (including bitsandbytes linears)."""
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(info.adapter_dir / ADAPTER_WEIGHTS), framework="pt") as fh:
        paths = {key.split(".lora_")[0].removeprefix("base_model.model.") for key in fh.keys() if ".lora_" in key}
    for path in sorted(paths):
        module = next((m for n, m in modules.items() if n.endswith(path)), None)
        layer = getattr(module, "base_layer", module)
        kind = type(layer).__name__
        if "Linear" not in kind and "Embedding" not in kind:
            raise ModelError(f"adapter {info.adapter_dir} adapts {path}, a {kind} layer; "
                             "tunesmith serve supports LoRA on linear and embedding layers")


class KnownAdapters:
    """The adapters a server knows, by name, read from any thread (the engines' registries)."""

    def __init__(self) -> None:
        self._known: dict[str, PreparedAdapter] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Optional[PreparedAdapter]:
        with self._lock:
            return self._known.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._known)

    def loaded_names(self) -> list[str]:
        return self.names()


class AdapterRegistry(KnownAdapters):
    """Registered adapters, the LRU set of loaded ones, and the model object they live in."""

    def __init__(self, model, *, max_loaded: int):
        super().__init__()
        self.model = model  # the base model, or a PeftModel wrapping it once an adapter is loaded
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._pins: Counter[str] = Counter()

    # ----------------------------------------------------------- any thread

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    @property
    def has_loaded_adapters(self) -> bool:
        return bool(self._loaded)

    # ----------------------------------------------------------- engine thread

    def add(self, prepared: PreparedAdapter) -> None:
        """Register an adapter and load it now if there is room (else it loads on first use)."""
        with self._lock:
            if prepared.name in self._known:
                raise ServeError(f"an adapter named {prepared.name!r} is already loaded",
                                 hint="unload it first, or pick another name")
        check_adapter_fits(prepared.info, self.model)
        _check_layer_types(prepared.info, self.model)
        with self._lock:
            self._known[prepared.name] = prepared
        try:
            self.acquire(prepared.name)
        except Exception:
            with self._lock:
                self._known.pop(prepared.name, None)
            raise
        self.release(prepared.name)

    def remove(self, name: str) -> None:
        """Unregister; the weights leave memory as soon as no running sequence uses them."""
        with self._lock:
            if self._known.pop(name, None) is None:
                raise ServeError(f"no adapter named {name!r} is loaded")
        if name in self._loaded and not self._pins[name]:
            self._evict(name)

    def acquire(self, name: str) -> bool:
        """Make sure `name` is loaded and pin it for one sequence; False if no slot can be freed now."""
        if name in self._loaded:
            with self._lock:
                self._loaded.move_to_end(name)
        else:
            victim = None
            if len(self._loaded) >= self.max_loaded:
                victim = next((n for n in self._loaded if not self._pins[n]), None)
                if victim is None:
                    return False
            self._load(name)
            if victim is not None:
                self._evict(victim)
        self._pins[name] += 1
        return True

    def release(self, name: str) -> None:
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]
            with self._lock:
                gone = name not in self._known
            if gone and name in self._loaded:
                self._evict(name)

    def _load(self, name: str) -> None:
        from peft import PeftModel

        with self._lock:
            prepared = self._known[name]
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(prepared.info.adapter_dir), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(prepared.info.adapter_dir),
                                                       adapter_name=name, is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load adapter {name!r} from {prepared.info.adapter_dir}: {exc}") from None
        self.model.eval()
        with self._lock:
            self._loaded[name] = None

    def _evict(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)
        if self._loaded:
            with warnings.catch_warnings():
                # PEFT warns that the deleted adapter was "active"; rows pick adapters per batch here.
                warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
                self.model.delete_adapter(name)
        else:
            # PEFT cannot run a PeftModel whose last adapter was deleted; take the plain model back.
            self.model = self.model.unload()
