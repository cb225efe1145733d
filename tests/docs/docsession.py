"""One sandbox per docs page, where the page's examples run in order as a reader would run them.

The sandbox is a temporary directory holding a copy of `examples/` (configs and demo data) and,
for every `runs/NAME` the page's examples mention, a stand-in training run (a small LoRA adapter
on the embedded model, as `tunesmith train` lays it out), since training for real takes minutes.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from pathlib import Path

import doccli
import docdata
import docpython
import docshell
from docblocks import REPO, Block, Page
from dochttp import DOC_HOSTS, Servers, point_at, run_curl
from serve_helpers import write_run_dir

DOC_KEY = "doc-test-key"   # what `$KEY` (shell) and `KEY` / `key` (Python) stand for
SHELL = {"bash", "sh", "shell"}
CHECKED = SHELL | {"console", "python", "json", "jsonl", "yaml", "yml"}
MARKERS_ALLOWED = {"python": {"skip"}, "json": {"schema"}, "jsonl": {"schema"}, "yaml": {"config"}, "yml": {"config"}}


def _tokenizer():
    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_tokenizer

    return load_tokenizer(ModelConfig())


def _model():
    from tunesmith.models.config import ModelConfig
    from tunesmith.models.loading import load_model

    return load_model(ModelConfig(), device="cpu")


# Names a page's Python examples may use without defining them (the objects its prose talks about).
PAGE_FIXTURES = {
    "docs/chat.md": {"tokenizer": _tokenizer, "model": _model,
                     "messages": lambda: [{"role": "user", "content": "My invoice is wrong"},
                                          {"role": "assistant", "content": "{\"category\": \"billing\"}"}]},
}
GLOBAL_FIXTURES = {"KEY": lambda: DOC_KEY, "key": lambda: DOC_KEY}


@functools.cache
def _stand_in_template() -> Path:
    """A training run directory as `tunesmith train` writes one (adapter/ and manifest.json), with
    a small random LoRA adapter on the embedded model; built once per test process."""
    root = Path(tempfile.mkdtemp(prefix="tunesmith-docs-run-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write_run_dir(root / "run", seed=1)


class Sessions:
    """Every page's session, the servers they start and the stand-in run they copy."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.servers = Servers(self.stand_in_run)
        self._pages: dict[Path, PageSession] = {}

    @staticmethod
    def stand_in_run(path: Path) -> None:
        if not path.exists():
            shutil.copytree(_stand_in_template(), path)

    def page(self, page: Page) -> "PageSession":
        if page.path not in self._pages:
            self._pages[page.path] = PageSession(page, self)
        return self._pages[page.path]

    def close(self) -> None:
        self.servers.close()


class PageSession:
    def __init__(self, page: Page, sessions: Sessions):
        self.page, self.sessions = page, sessions
        self.dir = sessions.tmp / page.path.as_posix().replace("/", "_").removesuffix(".md")
        for sub in ("data", "configs", "jobs"):
            shutil.copytree(REPO / "examples" / sub, self.dir / "examples" / sub)
        for name in sorted(set(re.findall(r"\bruns/([\w.-]+)", page.text))):
            sessions.stand_in_run(self.dir / "runs" / name)
        self.env = {"KEY": DOC_KEY}
        self.namespace: dict = {"__name__": "__doc_example__"}
        self.server_cfg = None
        self._outcomes: dict[int, object] = {}

    def outcome(self, block: Block) -> str:
        """Run the page's blocks up to this one, in order and once each; this block's outcome."""
        for earlier in self.page.blocks[: block.index + 1]:
            if earlier.index not in self._outcomes:
                try:
                    self._outcomes[earlier.index] = self._check(earlier)
                except Exception as exc:  # reported by that block's own test
                    self._outcomes[earlier.index] = exc
                finally:
                    if "load_lora_adapter" in earlier.text and self.server_cfg is not None:
                        self.sessions.servers.reset(self.server_cfg)
        result = self._outcomes[block.index]
        if isinstance(result, Exception):
            raise result
        return result

    def _check(self, block: Block) -> str:
        marker, lang = block.marker, block.lang
        allowed = MARKERS_ALLOWED.get(lang, set()) if lang in CHECKED else {"skip", "output"}
        if marker and marker.kind not in allowed:
            raise AssertionError(f"`{marker.kind}` marker refused: the harness checks ```{lang or 'text'} blocks "
                                 "itself; remove the marker (or fix the example)")
        if lang not in CHECKED:
            if marker is None:
                raise AssertionError(f"a ```{lang or '(no language)'} block is neither checked nor marked; "
                                     "add <!-- doc-test: output --> or <!-- doc-test: skip (reason) --> before it")
            return f"{marker.kind}: {marker.reason or 'output shown, not checked'}"
        if lang in SHELL:
            return self._shell(block)
        if lang == "console":
            return self._console(block)
        if lang == "python":
            return self._python(block, stubbed=marker is not None)
        if lang in ("json", "jsonl"):
            return "checked: " + docdata.check_json_block(block.text, block.prose, marker and marker.kind)
        return "checked: " + docdata.check_yaml_block(block.text, block.path.name, marker.arg if marker else "")

    # ----------------------------------------------------------------------- shell

    def _shell(self, block: Block) -> str:
        cwd, ran = self.dir, []
        for command in docshell.parse_commands(block.text, self.env):
            argv, tool = command.argv, docshell.tool_of(command.argv)
            try:
                if self._shell_command(tool, argv, cwd, command.comments):
                    ran.append(" ".join(argv[:3]))
                if tool == "cd":
                    cwd = cwd / argv[1]
                    assert cwd.is_dir(), f"`cd {argv[1]}`: no such directory after the page's commands"
            except AssertionError as exc:
                raise AssertionError(f"line {block.line + command.line}: {exc}") from None
        return f"ran: {'; '.join(ran)}" if ran else "checked"

    def _shell_command(self, tool: str, argv: list[str], cwd: Path, comments: list[str]) -> bool:
        """Check one command; True when it was run for real."""
        if tool == "tunesmith":
            return self._tunesmith(argv[1:], cwd)
        if tool == "python":
            return self._tunesmith(docshell.python_argv(argv)[1:], cwd)
        if tool in ("torchrun", "accelerate"):
            return self._tunesmith(docshell.launched_command(argv)[1:], cwd, dry=True)
        if tool == "curl":
            run_curl(argv, self._server(), comments)
            return True
        checks = {"make": docshell.check_make, "pip": docshell.check_pip, "cd": lambda argv: None}
        if tool in checks:
            checks[tool](argv)
        elif tool in docshell.EXTERNAL_TOOLS:
            docshell.check_external(argv, cwd)
        else:
            raise AssertionError(f"no checker for `{tool}`: teach tests/docs/docsession.py about it")
        return False

    def _tunesmith(self, args: list[str], cwd: Path, dry: bool = False) -> bool:
        doccli.check_examples_paths(args)
        if doccli.is_synopsis(args):
            doccli.check_synopsis(args)
            return False
        cfg = doccli.resolve(args, cwd)
        path, _ = doccli.verb_of(args)
        if path == ("serve",):
            self.server_cfg = cfg   # started when an example talks to it
            return False
        if not dry and doccli.runnable(path, cfg, cwd):
            doccli.run(args, cwd)
            return True
        return False

    def _server(self):
        if self.server_cfg is None:
            return None
        return self.sessions.servers.get(self.server_cfg, self.dir, self.page.text)

    # ----------------------------------------------------------------------- console, python

    def _console(self, block: Block) -> str:
        for command, expected in doccli.console_outputs(block.text):
            actual = doccli.run_console(command, self.dir)
            assert actual == expected, ("`$ " + command + "` prints:\n" + "\n".join(actual) +
                                        "\nbut the docs show:\n" + "\n".join(expected))
        return "ran: console"

    def _python(self, block: Block, stubbed: bool) -> str:
        source = block.text
        if any(host in source for host in DOC_HOSTS):
            live = self._server()
            assert live is not None, "this example talks to a server, but no `tunesmith serve` comes before it"
            source = point_at(source, live)
        fixtures = {**GLOBAL_FIXTURES, **PAGE_FIXTURES.get(block.path.as_posix(), {})}
        for name in docpython.free_names(source) - set(self.namespace):
            if name in fixtures:
                self.namespace[name] = fixtures[name]()
        calls: list[str] = []
        with doccli.working_dir(self.dir):
            if not stubbed:
                docpython.execute(source, self.namespace)
                return "ran: python"
            with docpython.heavy_stubbed(calls):
                docpython.execute(source, self.namespace)
        assert calls, (f"marked skip ({block.marker.reason}), but it calls none of the slow entry points "
                       f"{sorted(docpython.HEAVY)}: it can run, so remove the marker")
        return f"checked: python with {', '.join(calls)} stubbed"
