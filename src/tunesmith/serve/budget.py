"""A time budget for rendering chat templates, enforced inside the rendering thread.

A chat template is a Jinja program shipped with a model or adapter. transformers renders it in
Jinja's sandbox, which stops attribute tricks but not a template that loops for ever (nested
`range` loops) or recurses until the stack runs out. Python cannot kill a thread, so the budget is
checked from a profile hook (`sys.setprofile`, this thread only): Jinja's compiled templates call
functions and resume generators all the time, and the hook raises once the deadline has passed,
which unwinds the render like any error. The cost is one cheap call per Python call while a
template renders, which is small next to tokenising the result.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TypeVar

from tunesmith.errors import TemplateError

T = TypeVar("T")

# A real chat template renders in milliseconds; this is far beyond any of them.
TEMPLATE_SECONDS = 5.0


class _OverBudget(TemplateError):
    pass


def within_budget(fn: Callable[[], T], *, seconds: float | None = None, what: str = "render") -> T:
    """`fn()`, or a TemplateError if it runs longer than `seconds` or recurses without end."""
    seconds = TEMPLATE_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    previous = sys.getprofile()

    def hook(frame, event, arg):
        if time.monotonic() > deadline:
            sys.setprofile(None)
            raise _OverBudget(
                f"the chat template did not {what} within {seconds:g} s; it loops or does far too much work",
                hint="fix the template (tokenizer_config.json / chat_template.jinja) or use the base model's",
            )

    sys.setprofile(hook)
    try:
        return fn()
    except RecursionError:
        raise TemplateError(f"the chat template recursed without end while trying to {what}",
                            hint="fix the template's recursive macros") from None
    finally:
        sys.setprofile(previous)
