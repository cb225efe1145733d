"""Training: `run` is one run (setup -> loop -> save) for every objective; `sft` and `objectives`
say what each objective trains on; the other modules are the parts a run is built from."""

import logging
import warnings

# bitsandbytes logs a warning on every CPU import about an optional kernel package; it changes
# nothing for tunesmith users, so keep it out of their training logs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft calls a transformers method that transformers 5 deprecates; the warning is not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
