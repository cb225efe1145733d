"""Switching chosen modules of a model to another forward, for the lean CPU layers
(`lean_lora`, `lean_mlp`, `lean_norm`): each decides which modules it can reproduce, and a
module whose forward was already switched is left alone, so switching twice is harmless."""

from __future__ import annotations

import inspect
import re
from types import MethodType
from typing import Callable, Optional

from torch import nn


def forward_source(module: nn.Module) -> Optional[str]:
    """The source of the module class's forward with all whitespace removed (None when the source
    is not available), to compare with the library forward a lean layer reproduces."""
    try:
        return re.sub(r"\s+", "", inspect.getsource(type(module).forward))
    except (OSError, TypeError):
        return None


def swap_forwards(model: nn.Module, matches: Callable[[nn.Module], bool], forward: Callable) -> int:
    """Bind `forward` as the forward of every module of `model` that `matches`; returns how many."""
    switched = 0
    for module in model.modules():
        if "forward" not in module.__dict__ and matches(module):
            module.forward = MethodType(forward, module)
            switched += 1
    return switched
