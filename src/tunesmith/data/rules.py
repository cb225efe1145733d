"""The named rules an example can break, and the finding that records a broken one.

Every rejected example carries exactly one rule name (the first rule it broke, in pipeline
order: reading, format, validation, PII, deduplication, length). The names are stable: they are
written to `rejected.jsonl`, counted in `manifest.json`, and documented in docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass


# The pipeline steps in order; each rule belongs to the step that applies it.
STEPS: tuple[str, ...] = ("read", "format", "validate", "pii", "dedup", "length")


@dataclass(frozen=True)
class Rule:
    name: str
    step: str
    description: str
    fix: str


_RULES = (
    Rule("invalid_json", "read", "the line is not valid JSON",
         "fix the line (often a missing bracket or an unescaped quote or newline); each JSONL line must hold one whole JSON value"),
    Rule("non_utf8", "read", "the line holds bytes that are not UTF-8",
         "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"),
    Rule("too_deep", "read", "the line nests JSON lists or objects more than 100 levels deep",
         "flatten the example; no chat format needs such nesting"),
    Rule("not_an_object", "read", "the line is valid JSON but not an object ({...})",
         "write one JSON object per example, e.g. {\"messages\": [...]}"),
    Rule("missing_messages", "format", "the row lacks the fields its format needs (messages, conversations, instruction/output, ...)",
         "add the missing field, or rename your columns with --map yours=ours"),
    Rule("bad_message", "format", "a message is malformed: not an object, content not a string, bad weight or tool_calls",
         "each message must be {\"role\": ..., \"content\": \"...\"}; weight is 0 or 1, tool_calls a list"),
    Rule("bad_field", "format", "a top-level field has the wrong type (tools not a list, label not true/false, text not a string)",
         "fix the field's type as described in docs/data.md"),
    Rule("unknown_role", "format", "a message has a role other than system, user, assistant or tool",
         "rename the role (ShareGPT's human/gpt/observation/function_call are understood)"),
    Rule("empty_content", "validate", "a message (or a text example) is empty or only whitespace",
         "remove the empty turn or fill it in"),
    Rule("no_assistant_turn", "validate", "there is no assistant turn with weight 1, so the model would learn nothing",
         "add the answer the model should give, or drop the example"),
    Rule("bad_role_order", "validate", "turns are out of order: system not first, a conversation not starting with user, "
         "two user or assistant turns in a row, a tool turn without a tool call, or a last turn that is not the assistant's",
         "reorder or merge the turns so user and assistant alternate after an optional system message"),
    Rule("identical_pair", "validate", "the chosen and rejected answers of a preference pair are the same",
         "a pair teaches nothing unless the answers differ; drop it or fix the rejected answer"),
    Rule("mixed_kind", "validate", "the example is of another kind (chat, preference, KTO, text) than the rest of the dataset",
         "prepare each kind of data as its own dataset"),
    Rule("too_long", "validate", "the example has more characters than max_chars",
         "split the example, or raise --max-chars if such long examples are intended"),
    Rule("pii", "pii", "the example contains personal data and --pii drop is set",
         "use --pii redact to keep the example with typed placeholders instead"),
    Rule("duplicate", "dedup", "the same text (ignoring case and whitespace, and system prompts) appeared earlier",
         "nothing to do: the first copy is kept; set dedup.keep=true to keep copies (in one split)"),
    Rule("near_duplicate", "dedup", "an earlier example is nearly the same (estimated Jaccard similarity over the threshold)",
         "nothing to do: the first one is kept; raise dedup.threshold to remove fewer"),
    Rule("template_error", "length", "--model's chat template cannot render the example (for example a tool turn "
         "for a template without tool support)",
         "pick a model whose template supports the example's roles, or drop such examples"),
    Rule("overlong", "length", "the example has more tokens than --max-seq-len under --model's chat template",
         "raise --max-seq-len, shorten the example, or use --overlong truncate"),
)

RULES: dict[str, Rule] = {rule.name: rule for rule in _RULES}


@dataclass(frozen=True)
class Finding:
    """One rejected example: which rule it broke, where, and in plain words why."""

    rule: str
    message: str
    source: str
    line: int
    field: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def render(self) -> str:
        field = f" ({self.field})" if self.field else ""
        return f"{self.where}: {self.rule}{field}: {self.message}"


class Reject(Exception):
    """Raised while normalising or validating one example; becomes a `Finding`."""

    def __init__(self, rule: str, message: str, field: str | None = None):
        assert rule in RULES, rule
        self.rule = rule
        self.message = message
        self.field = field
        super().__init__(f"{rule}: {message}")
