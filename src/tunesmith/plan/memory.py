"""The memory a training step needs, per component, from the config and the model's shape alone.

Each figure follows what tunesmith's training code allocates (checked tensor by tensor with
autograd's saved-tensor hooks on CPU, and against the peak RSS of real runs, see
tests/integration/test_plan_calibration.py):

- weights in the load dtype (`auto`: bf16 on a bf16 GPU, fp32 on CPU); for QLoRA the quantised
  linear layers at 4 or 8 bits and everything else upcast to fp32, as PEFT's
  `prepare_model_for_kbit_training` does (for an 8B Llama that is 4.2 GB of fp32 embeddings);
- LoRA parameters, their gradients and AdamW moments in fp32 (PEFT keeps adapters in fp32);
  full fine-tuning: gradients and moments in the weights' dtype;
- activations saved for the backward pass, per layer and token: the fp32 RMSNorm inputs, the
  attention's query, key, value and output (on GPUs keys and values are repeated to every head
  when a mask is given, as transformers' SDPA path does; on CPU they are not, see
  train/cpu_attention.py), the MLP's gate, up, activation and product, the inputs a
  trainable linear layer keeps, LoRA's dropout masks (on CPU the dropped positions; on GPUs,
  where PEFT's own forward runs, also its dropped-out copies) and rank-r intermediates, and the attention
  mask SDPA receives for packed rows (rows x length^2 per layer; on CPU a packed micro-batch is
  one flattened sequence attended per example, train/document_attention.py, so no layer keeps a
  mask and transformers builds one boolean mask of (rows x length)^2); with gradient
  checkpointing, one hidden state per layer plus one layer recomputed;
- the output head at the trained positions only (`train/loss.py`): for SFT, fused with the loss
  in chunks, the hidden states and a logsumexp per trained position plus one chunk's logits and
  their gradient; for preference objectives and models whose logits are capped or scaled after
  the head, the logits, their fp32 copy, log-softmax and its gradient, for the share of positions
  that carry loss;
- preference objectives: two rows (chosen, rejected) per pair, and for DPO/KTO the reference
  log-probabilities (a copy of the model for full fine-tuning; LoRA uses the base with the
  adapter switched off);
- sharding (FSDP, DeepSpeed ZeRO-3) divides weights, gradients and optimiser state over the
  GPUs and adds the gathered layers; DDP keeps full copies plus its gradient buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tunesmith.plan.config import TrainConfig
from tunesmith.plan.devices import CUDA_CONTEXT_BYTES, GIB, Target
from tunesmith.plan.shapes import ModelShape

PREFERENCE_PAIRS = ("dpo", "orpo", "simpo")
# Objectives whose loss fuses the output head with the cross-entropy (`train/loss.py`), and its
# chunk size (CHUNK_BYTES and MIN_CHUNK_ROWS there).
FUSED_HEAD_OBJECTIVES = ("sft", "pretrain")
FUSED_HEAD_CHUNK_BYTES = 32 * 2**20
FUSED_HEAD_MIN_ROWS = 16
NEEDS_REFERENCE = ("dpo", "kto")

# CPU runs: the resident memory of a `tunesmith train` process before the model is loaded (Python,
# torch, transformers, peft, tokenizer, data), and what glibc's allocator keeps on top of the saved
# activations. Every LoRA layer adds short-lived tensors in the forward and backward passes (the
# adapter's product, the dropout mask draw, the gradients of its input), and the lean MLP
# recomputes its activation in the backward pass; that churn leaves about 0.4 times the saved
# activations again resident after the first steps (PEFT's own forward, with three full-width
# temporaries per layer instead of train/lean_lora.py's one, left 0.7 on top of larger
# activations), while full fine-tuning keeps about a tenth more. Calibrated on each run's own VmHWM, see
# tests/integration/test_plan_calibration.py.
CPU_FRAMEWORK_BYTES = int(0.52 * GIB)
CPU_ALLOCATOR_OVERHEAD = {"lora": 0.4, "full": 0.1}
# GPU runs: the caching allocator's fragmentation on top of the activations.
GPU_ALLOCATOR_OVERHEAD = 0.05
# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64 weights and
# an fp32 constant per 256 absmax values; without double quantisation an fp32 absmax per 64.
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}


@dataclass
class Component:
    name: str
    bytes: int
    note: str = ""


@dataclass
class Estimate:
    """Per-device memory of one training process, by component, and the serving KV cache."""

    components: list[Component]
    total: int
    phase: str                       # which part of the step is the peak
    target: Target
    kv_cache: int
    serve_weights: int
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.total <= self.target.bytes

    @property
    def headroom(self) -> int:
        return self.target.bytes - self.total

    def get(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)


@dataclass(frozen=True)
class Workload:
    """What the estimate depends on besides the shape: resolved from a TrainConfig."""

    method: str
    quantization: str
    double_quant: bool
    dtype_bytes: int
    rows: int                 # sequences in one micro-batch (x2 for chosen+rejected)
    seq_len: int
    checkpointing: bool
    optimizer: str
    lora_r: int
    lora_targets: list[str] | str
    lora_dropout: float
    objective: str
    strategy: str             # none | ddp | fsdp | deepspeed_zero3
    gpus: int
    attention: str
    trained_share: float
    offload_optimizer: bool
    offload_params: bool
    lean_lora: bool = False   # train/lean_lora.py and lean_mlp.py run the layers (LoRA on CPU)
    grouped_attention: bool = False  # keys and values not repeated per query head (train/cpu_attention.py, CPU)
    document_attention: bool = False  # packed micro-batch flattened, attention per example (train/document_attention.py)


def workload(cfg: TrainConfig, target: Target, gpus: int, trained_share: float) -> Workload:
    dtype = cfg.model.dtype
    if dtype == "auto":
        dtype = ("bf16" if target.bf16 else "fp16") if target.gpu else "fp32"
    objective = getattr(cfg, "objective", "sft") or "sft"
    rows = cfg.train.micro_batch_size * (2 if objective in PREFERENCE_PAIRS else 1)
    strategy = "none"
    if gpus > 1:
        strategy = "ddp" if cfg.train.distributed == "auto" else cfg.train.distributed
    train = cfg.train
    return Workload(
        method=cfg.method, quantization=cfg.model.quantization, double_quant=cfg.model.bnb_4bit_double_quant,
        dtype_bytes=4 if dtype == "fp32" else 2, rows=rows, seq_len=train.max_seq_len,
        checkpointing=train.gradient_checkpointing, optimizer=train.optimizer, lora_r=cfg.lora.r,
        lora_targets=cfg.lora.target_modules, lora_dropout=cfg.lora.dropout, objective=objective,
        strategy=strategy, gpus=gpus, attention=cfg.model.attn_implementation,
        trained_share=1.0 if train.train_on_inputs else trained_share,
        offload_optimizer=strategy == "deepspeed_zero3" and train.zero3_offload_optimizer
        or strategy == "fsdp" and train.fsdp_cpu_offload,
        offload_params=strategy == "deepspeed_zero3" and train.zero3_offload_params
        or strategy == "fsdp" and train.fsdp_cpu_offload,
        lean_lora=cfg.method == "lora" and not target.gpu,
        grouped_attention=not target.gpu,
        document_attention=(not target.gpu and train.packing and objective in ("sft", "pretrain")
                            and cfg.model.attn_implementation in ("auto", "sdpa")),
    )


# --------------------------------------------------------------------------- weights


def weight_bytes(shape: ModelShape, w: Workload) -> int:
    """The base model's weights as loaded for training."""
    if w.method == "qlora":
        per_linear = NF4_BYTES[w.double_quant] if w.quantization == "4bit" else 1.0
        rest = shape.total_params - shape.layers * shape.layer_linear_params
        return int(shape.layers * shape.layer_linear_params * per_linear + rest * 4)
    return shape.total_params * w.dtype_bytes


def trainable(shape: ModelShape, w: Workload) -> tuple[int, int]:
    """(trainable parameters, bytes per trainable parameter)."""
    if w.method == "full":
        return shape.total_params, w.dtype_bytes
    return shape.lora_params(w.lora_r, w.lora_targets), 4  # PEFT keeps adapter weights in fp32


# --------------------------------------------------------------------------- activations


def _layer_elements(shape: ModelShape, w: Workload, masked: bool) -> tuple[float, float]:
    """(elements in the compute dtype, elements in fp32) saved per token by one decoder layer."""
    h, i, q, kv = shape.hidden, shape.intermediate, shape.q_width, shape.kv_width
    if shape.experts > 1:
        i = i * shape.experts_per_token
    full = w.method == "full"
    fp32 = 2 * h                                    # RMSNorm inputs, upcast to fp32
    kv_saved = q if masked and shape.kv_heads != shape.heads and not w.grouped_attention else kv
    act = q + 2 * kv_saved + q                      # attention: query, key, value, output
    act += (2 if w.lean_lora else 3) * i            # gate and up outputs (and the activation, unless lean)
    if full:
        act += 2 * h                                 # normalised inputs, kept for the norm weights' gradient
    adapted = set(shape.adapted_modules(w.lora_targets)) if not full else set()
    inputs = {"attn_in": (h, ("q_proj", "k_proj", "v_proj")), "o_in": (q, ("o_proj",)),
              "mlp_in": (h, ("gate_proj", "up_proj")), "down_in": (i, ("down_proj",))}
    for width, users in inputs.values():
        lora_users = [u for u in users if u in adapted]
        if full or (lora_users and (w.lora_dropout == 0 or w.lean_lora)):
            act += width                             # one input tensor, kept by its consumers
        if lora_users and w.lora_dropout > 0:
            # per adapted layer, the lean branch keeps the dropped positions (8 bytes per dropped
            # element, train/dropout.py); PEFT's own forward keeps a one-byte mask and a dropped-out copy
            mask_bytes = 8 * w.lora_dropout if w.lean_lora else 1
            act += len(lora_users) * width * ((0 if w.lean_lora else 1) + mask_bytes / w.dtype_bytes)
    if not full:
        act += len(adapted) * w.lora_r               # LoRA A outputs
    return act, fp32


def head_is_fused(shape: ModelShape, w: Workload) -> bool:
    """Whether training computes the output head fused with the loss, in chunks (`train/loss.py`)."""
    return w.objective in FUSED_HEAD_OBJECTIVES and not shape.logits_postprocessed


def activation_bytes(shape: ModelShape, w: Workload) -> tuple[int, int, int]:
    """(saved layer activations, attention masks, output head) for one micro-batch."""
    tokens = w.rows * w.seq_len
    masked = w.attention != "flash_attention_2" and not w.document_attention
    act, fp32 = _layer_elements(shape, w, masked)
    per_layer = tokens * (act * w.dtype_bytes + fp32 * 4)
    mask_per_layer = w.rows * w.seq_len**2 * w.dtype_bytes if masked else 0
    if w.checkpointing:
        layers = tokens * shape.hidden * w.dtype_bytes * shape.layers + per_layer
        masks = mask_per_layer
    else:
        layers = per_layer * shape.layers
        masks = mask_per_layer * shape.layers
    if w.document_attention:
        # no layer keeps a mask, but transformers still builds one boolean mask over the flattened
        # micro-batch from the restarting positions
        masks = tokens**2
    trained = tokens * w.trained_share
    logit_bytes = 4 if w.method == "qlora" else w.dtype_bytes
    if head_is_fused(shape, w):
        # Head fused with the loss, in chunks: the hidden states at trained positions and one
        # logsumexp per position are saved; one chunk's logits and their gradient are transient.
        chunk = min(trained, max(FUSED_HEAD_MIN_ROWS, FUSED_HEAD_CHUNK_BYTES // (4 * shape.vocab)))
        head = int(trained * (shape.hidden * w.dtype_bytes + 4) + chunk * shape.vocab * (logit_bytes + 4))
    else:
        # Logits at trained positions (fp32 under QLoRA's fp32 head), their fp32 copy, log-softmax
        # and its gradient live together at the start of the backward pass.
        head = int(trained * shape.vocab * (logit_bytes + 4 + 4) + trained * shape.hidden * w.dtype_bytes)
    return int(layers), int(masks), head


# --------------------------------------------------------------------------- the estimate


def estimate(shape: ModelShape, w: Workload, target: Target, serve_batch: int, serve_context: int) -> Estimate:
    n = w.gpus
    sharded = w.strategy in ("fsdp", "deepspeed_zero3")
    weights = weight_bytes(shape, w)
    params, param_bytes = trainable(shape, w)
    trainable_bytes = params * param_bytes if w.method != "full" else 0   # full: the weights are trainable
    grads = params * param_bytes
    optimizer = params * (2 if w.optimizer != "adamw" else 2 * param_bytes)
    master = params * 4 if w.strategy == "deepspeed_zero3" and w.method == "full" else 0
    components: list[Component] = []
    notes: list[str] = []

    if sharded:
        layer_bytes = (shape.layer_linear_params + shape.layer_other_params) * w.dtype_bytes
        root = (shape.embedding_params + shape.hidden) * w.dtype_bytes
        gathered = 2 * layer_bytes + root
        shard = 0 if w.offload_params else weights // n
        components.append(Component("weights", shard + gathered,
                                    f"1/{n} shard + gathered layers ({gathered / GIB:.2f} GiB)"))
        grads //= n
        optimizer = 0 if w.offload_optimizer else optimizer // n
        master = 0 if w.offload_optimizer else master // n
        if w.offload_optimizer:
            notes.append(f"optimiser state in CPU RAM: {(params * 12) / GIB:.1f} GiB for all {n} processes")
    else:
        note = {"qlora": f"{w.quantization} linear layers, the rest in fp32"}.get(w.method, "")
        components.append(Component("weights", weights, note))
    if trainable_bytes:
        components.append(Component("LoRA parameters", trainable_bytes, f"{params:,} parameters, fp32"))
    components.append(Component("gradients", grads, "fp32" if w.method != "full" else
                                "counted at the optimiser step, when the activations are gone"))
    if w.strategy == "ddp":
        components.append(Component("DDP gradient buckets", grads))
    opt_note = "AdamW, 2 moments" + (" in 8 bits" if w.optimizer != "adamw" else "")
    components.append(Component("optimiser state", optimizer + master, opt_note))
    if w.objective in NEEDS_REFERENCE and w.method == "full":
        components.append(Component("reference model", weights // (n if sharded else 1),
                                    "a frozen copy for the reference log-probabilities"))
    layers, masks, head = activation_bytes(shape, w)
    act_note = f"micro-batch {w.rows} x {w.seq_len} tokens" + (", checkpointed" if w.checkpointing else "")
    components.append(Component("activations", layers, act_note))
    if masks:
        note = ("one mask over the flattened micro-batch (attention runs per example)" if w.document_attention
                else "SDPA mask of packed/padded rows")
        components.append(Component("attention masks", masks, note))
    fused = " (fused with the loss)" if head_is_fused(shape, w) else ""
    components.append(Component("output head", head, f"logits at {w.trained_share:.0%} of positions{fused}"))
    if w.objective in NEEDS_REFERENCE:
        components.append(Component("reference log-probs", w.rows * 8, "one number per sequence"))
    dynamic = layers + masks + head
    if target.gpu:
        components.append(Component("CUDA context", CUDA_CONTEXT_BYTES))
        components.append(Component("allocator", int(GPU_ALLOCATOR_OVERHEAD * dynamic), "fragmentation"))
    else:
        components.append(Component("framework", CPU_FRAMEWORK_BYTES, "python, torch, transformers, data"))
        cpu_overhead = CPU_ALLOCATOR_OVERHEAD["full" if w.method == "full" else "lora"]
        # The forward pass allocates every layer's tensors whether or not they are checkpointed
        # (checkpointing frees them layer by layer); what malloc keeps follows that churn.
        churn = sum(activation_bytes(shape, replace(w, checkpointing=False))) if w.checkpointing else dynamic
        components.append(Component("allocator", int(cpu_overhead * churn), "freed temporaries malloc keeps"))

    # The step's peak: the end of the forward pass (activations live) or the optimiser step
    # (gradients live, activations gone, plus the foreach AdamW temporaries on GPUs).
    fixed = sum(c.bytes for c in components if c.name not in ("gradients", "DDP gradient buckets"))
    forward_peak = fixed
    if target.gpu:
        step_temporaries = grads if w.optimizer == "adamw" else 0   # foreach AdamW: one list-wide temporary
    else:
        # single-tensor AdamW on CPU: two temporaries the size of the largest trainable tensor
        largest = shape.vocab * shape.hidden if w.method == "full" else max(
            w.lora_r * max(n_in, n_out) for n_in, n_out in shape.linear_shapes().values())
        step_temporaries = 2 * largest * param_bytes
    allocator = sum(c.bytes for c in components if c.name == "allocator")
    step_peak = fixed - dynamic - allocator + grads * (2 if w.strategy == "ddp" else 1) + step_temporaries
    if step_peak > forward_peak:
        phase = "optimiser step"
        if step_temporaries:
            components.append(Component("optimiser temporaries", step_temporaries, "AdamW's scratch tensors"))
        total = step_peak
    else:
        phase = "end of the forward pass"
        # Gradients of trainable weights are mostly written while activations are freed; LoRA's
        # are small. Count the gradients that exist while the head's backward runs.
        total = forward_peak + (grads if w.method != "full" else 0)
    kv = 2 * shape.layers * shape.kv_width * serve_context * serve_batch * w.dtype_bytes
    serve_weights = weight_bytes(shape, w) if w.method == "qlora" else shape.total_params * w.dtype_bytes
    return Estimate(components=components, total=int(total), phase=phase, target=target, kv_cache=kv,
                    serve_weights=serve_weights, notes=notes)
