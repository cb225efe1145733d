"""The docs harness itself: every checker passes a correct example and fails a broken copy of it,
so no docs test is one that cannot fail. Each case is a scratch markdown page, never the docs."""

from __future__ import annotations

import textwrap

import pytest
from docblocks import parse_page
from docsession import Sessions
from tuned_helpers import one_thread

SERVE = "```bash\ntunesmith serve --model default --adapter support=runs/sft\n```\n"
KEYED = "```bash\ntunesmith serve --adapter-root adapters --api-key \"$KEY\"\n```\n"
CHAT = ("curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' "
        "-d '{\"model\": \"support\", \"max_tokens\": 4, \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'")
CLIENT = 'from openai import OpenAI\nclient = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")\n'
ASK = 'client.chat.completions.create(model="support", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)'
LOAD = ('import httpx\nhttpx.post("http://127.0.0.1:8000/v1/load_lora_adapter", headers={"Authorization": f"Bearer {key}"},\n'
        '           json={"lora_name": "b2", "lora_path": "billing/run-7"})\n')
TRAIN = ('from tunesmith.config import load_config\nfrom tunesmith.train.config import TrainConfig\n'
         'from tunesmith.train import sft\n'
         'cfg = load_config(TrainConfig, "examples/configs/default-cpu-lora.yaml")\nresult = sft.run(cfg)\n')
SKIP = "<!-- doc-test: skip (trains) -->\n"


def fenced(lang: str, body: str, before: str = "") -> str:
    return f"{before}```{lang}\n{body.rstrip()}\n```\n"


# (case, correct page, broken page, a fragment of the failure message)
CASES = [
    ("unknown verb", fenced("bash", "tunesmith data demo --out d"), fenced("bash", "tunesmith data demon --out d"), "no subcommand 'demon'"),
    ("unknown flag", fenced("bash", "tunesmith data demo --out d"), fenced("bash", "tunesmith data demo --outt d"), "No such option"),
    ("unknown --set key", fenced("bash", "tunesmith train examples/configs/default-cpu-lora.yaml --set train.max_steps=5"),
     fenced("bash", "tunesmith train examples/configs/default-cpu-lora.yaml --set train.max_step=5"), "unknown key `train.max_step`"),
    ("bad value", fenced("bash", "tunesmith eval --model runs/sft --limit 5"), fenced("bash", "tunesmith eval --model runs/sft --limit 0"), "limit"),
    ("missing example file", fenced("bash", "tunesmith eval --data examples/data/tickets/test.jsonl"),
     fenced("bash", "tunesmith eval --data examples/data/tickets/tests.jsonl"), "does not exist"),
    ("command that runs and fails", fenced("bash", "tunesmith data prepare examples/data/tickets/dirty.jsonl --out d"),
     fenced("bash", "tunesmith data prepare examples/data/tickets/dirty.jsonl --out d --strict"), "failed (exit"),
    ("synopsis", fenced("bash", "tunesmith train CONFIG.yaml [--resume latest|DIR]"),
     fenced("bash", "tunesmith train CONFIG.yaml [--resume [latest|DIR]]"), "shows it as optional"),
    ("synopsis option", fenced("bash", "tunesmith train CONFIG.yaml [--print-config]"),
     fenced("bash", "tunesmith train CONFIG.yaml [--print-conf]"), "has no option --print-conf"),
    ("torchrun option", fenced("bash", "torchrun --nproc_per_node 2 -m tunesmith train examples/configs/multi-gpu-ddp.yaml"),
     fenced("bash", "torchrun --nprocs 2 -m tunesmith train examples/configs/multi-gpu-ddp.yaml"), "does not accept"),
    ("launched config", fenced("bash", "torchrun --nproc_per_node 2 -m tunesmith train examples/configs/multi-gpu-ddp.yaml"),
     fenced("bash", "torchrun --nproc_per_node 2 -m tunesmith train examples/configs/multi-gpu.yaml"), "does not exist"),
    ("make target", fenced("bash", "make test"), fenced("bash", "make tests"), "no target 'tests'"),
    ("pip extra", fenced("bash", "pip install -e '.[qlora]'"), fenced("bash", "pip install -e '.[qloraa]'"), "unknown extra"),
    ("external tool file", fenced("bash", "tunesmith data demo --out d\nollama create x -f d/train.jsonl"),
     fenced("bash", "tunesmith data demo --out d\nollama create x -f d/Modelfile"), "do not create"),
    ("unknown program", fenced("bash", "make test"), fenced("bash", "frobnicate --all"), "no checker for `frobnicate`"),
    ("console output", fenced("console", "$ tunesmith data demo --set trian_size=10\nerror: invalid config:\n"
                              "  --set trian_size=10: unknown key `trian_size`; did you mean `train_size`?\n"
                              "  hint: `--print-config` shows every valid key with its default"),
     fenced("console", "$ tunesmith data demo --set trian_size=10\nerror: invalid config"), "but the docs show"),
    ("python error", fenced("python", "import json\njson.dumps({})"), fenced("python", "import json\njson.dump({})"), "TypeError"),
    ("python literal comment", fenced("python", "sorted([2, 1])  # [1, 2]"), fenced("python", "sorted([2, 1])  # [2, 1]"), "the docs say"),
    ("python type comment", fenced("python", "x = [1]  # list[int]"), fenced("python", "x = ['1']  # list[int]"), "not a list of ints"),
    ("python stubbed attribute", fenced("python", TRAIN + "result.steps", SKIP), fenced("python", TRAIN + "result.stepz", SKIP), "stepz"),
    ("python stubbed argument", fenced("python", TRAIN, SKIP), fenced("python", TRAIN.replace("run(cfg)", "run(cfg, 1)"), SKIP), "positional"),
    ("python skip refused", fenced("python", TRAIN, SKIP), fenced("python", "import json", SKIP), "remove the marker"),
    ("python client", SERVE + fenced("python", CLIENT + ASK), SERVE + fenced("python", CLIENT + ASK.replace("support", "suport")), "NotFound"),
    ("python http status", KEYED + fenced("python", LOAD), KEYED + fenced("python", LOAD.replace('"billing', '"../billing')), "HTTP 400"),
    ("curl status", SERVE + fenced("bash", CHAT), SERVE + fenced("bash", CHAT.replace('"support"', '"suport"')), "HTTP 404"),
    ("curl body field", SERVE + fenced("bash", CHAT), SERVE + fenced("bash", CHAT.replace("max_tokens", "max_token")), "does not know"),
    ("curl without server", SERVE + fenced("bash", CHAT), fenced("bash", CHAT), "needs a `tunesmith serve`"),
    ("curl shown keys", SERVE + fenced("bash", CHAT.replace("v1/chat/completions", "generate").replace(
        '"messages": [{"role": "user", "content": "Hi"}]', '"prompt": "Hi"') + '\n# {"response": "...", "model": "s", "finish_reason": "stop", "usage": {...}}'),
     SERVE + fenced("bash", CHAT.replace("v1/chat/completions", "generate").replace(
         '"messages": [{"role": "user", "content": "Hi"}]', '"prompt": "Hi"') + '\n# {"text": "...", "model": "s"}'), "the docs show the keys"),
    ("data format", fenced("json", '{"instruction": "Classify.", "output": "billing"}', "**Alpaca** (`alpaca`):\n\n"),
     fenced("json", '{"instruction": "Classify.", "output": "billing"}', "**OpenAI** (`openai`):\n\n"), "detected as `alpaca`"),
    ("data field", fenced("json", '{"prompt": "Hi", "completion": "Hello"}'), fenced("json", '{"prompt": "Hi", "completion": "Hello", "sytem": "x"}'), "does not use"),
    ("data rule", fenced("json", '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}'),
     fenced("json", '{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Yo"}]}'), "rejected"),
    ("json syntax", fenced("json", '{"text": "a"}'), fenced("json", '{"text": "a",}'), "not valid JSON"),
    ("schema order", fenced("json", '{"messages": [{"role": "user|assistant", "content": "..."}]}', "<!-- doc-test: schema -->\n"),
     fenced("json", '{"messages": [{"content": "...", "role": "user|assistant"}]}', "<!-- doc-test: schema -->\n"), "not in written order"),
    ("error body", fenced("json", '{"error": {"message": "m", "type": "t", "param": null, "code": "c"}}'),
     fenced("json", '{"error": {"message": "m", "type": "t", "code": "c"}}'), "the server's error body"),
    ("yaml config", fenced("yaml", "method: lora\ntrain:\n  epochs: 2"), fenced("yaml", "method: lora\ntrain:\n  epoch: 2"), "unknown key `train.epoch`"),
    ("accelerate config", fenced("yaml", "distributed_type: FSDP\nnum_processes: 2"), fenced("yaml", "distributed_type: FSDP\nnum_process: 2"), "unknown keys"),
    ("unmarked block", fenced("", "a diagram", "<!-- doc-test: output -->\n"), fenced("", "a diagram"), "neither checked nor marked"),
    ("marker refused", fenced("bash", "make test"), fenced("bash", "make test", "<!-- doc-test: output -->\n"), "marker refused"),
    ("skip refused", fenced("bash", "make test"), fenced("bash", "make test", "<!-- doc-test: skip (slow) -->\n"), "marker refused"),
]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    with one_thread():
        found = Sessions(tmp_path_factory.mktemp("harness"))
        try:
            yield found
        finally:
            found.close()


def _check_page(markdown: str, name: str, sessions: Sessions) -> None:
    root = sessions.tmp / "pages"
    root.mkdir(exist_ok=True)
    path = root / f"{name}.md"
    path.write_text("# scratch\n\n" + markdown, encoding="utf-8")
    page = parse_page(path, root)
    assert not page.problems, page.problems
    session = sessions.page(page)
    for block in page.blocks:
        session.outcome(block)


@pytest.mark.parametrize(("case", "good", "bad", "message"), CASES, ids=[c[0] for c in CASES])
def test_checker_passes_the_example_and_fails_a_broken_copy(case, good, bad, message, sessions):
    slug = case.replace(" ", "-").replace("/", "-")
    _check_page(good, f"{slug}-good", sessions)
    with pytest.raises(Exception) as failure:
        _check_page(bad, f"{slug}-bad", sessions)
    assert message in str(failure.value) or message in failure.typename, str(failure.value)


@pytest.mark.parametrize(("markdown", "problem"), [
    ("<!-- doc-test: skip -->\n```text\nx\n```\n", "needs a reason"),
    ("<!-- doc-test: output -->\n\nprose\n\n```text\nx\n```\n", "not right before a code block"),
    ("<!-- doc-test: skipp (why) -->\n```text\nx\n```\n", "unknown doc-test marker"),
    ("```bash\nmake test\n", "never closed"),
])
def test_bad_markers_are_reported(markdown, problem, tmp_path):
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(markdown), encoding="utf-8")
    problems = parse_page(path, tmp_path).problems
    assert any(problem in p for p in problems), problems
