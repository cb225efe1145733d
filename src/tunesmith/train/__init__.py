"""Training recipes. `sft` is supervised fine-tuning; `common` holds what recipes share."""

import logging
import warnings

# bitsandbytes logs a warning on every CPU import about an optional kernel package; it changes
# nothing for tunesmith users, so keep it out of their training logs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft calls a transformers method that transformers 5 deprecates; the warning is not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
