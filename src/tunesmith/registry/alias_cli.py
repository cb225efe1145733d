"""`tunesmith models promote|canary|rollback|alias|history|report`: move aliases, with an audit trail.

A running `tunesmith serve` that routes registry models reads the alias table every
`poll_interval` seconds, so each of these commands reaches live traffic without a restart.
Each command is a config, a `run(cfg)` and a result with a `summary()`; `ALIAS_VERBS` lists them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from pydantic import Field

from tunesmith.config import Flag
from tunesmith.errors import ConfigError
from tunesmith.registry.aliases import PRODUCTION, Aliases, Route, current_actor, parse_alias_ref, parse_weights
from tunesmith.registry.cli import RegistryCommand, json_text, open_registry, table_text
from tunesmith.verbs import Verb, say

Alias = Annotated[str, Flag("--alias")]
ALIAS_HELP = "alias to move (default: production, what NAME alone means)"
Reason = Annotated[str, Flag("--reason")]
AsJson = Annotated[bool, Flag("--json")]


class PromoteConfig(RegistryCommand):
    """`tunesmith models promote NAME@VERSION`."""

    ref: Annotated[str, Flag(argument=True)] = Field(..., description="NAME@VERSION to put into production")
    alias: Alias = Field(PRODUCTION, description=ALIAS_HELP)
    gate: Annotated[Optional[Path], Flag("--gate")] = Field(
        None, description="eval set (JSONL): the candidate must not score worse than the current version beyond "
        "the thresholds")
    regression: Annotated[Optional[Path], Flag("--regression")] = Field(
        None, description="regression prompts the candidate must keep passing (with --gate)")
    max_drop: Annotated[float, Flag("--max-drop")] = Field(
        0.02, ge=0, description="largest allowed fall of any score (absolute, e.g. 0.02 = two points of accuracy)")
    force: Annotated[bool, Flag("--force")] = Field(
        False, description="promote even when the gate refuses; recorded with your name in the history")
    reason: Reason = Field("", description="why, for the history")


class CanaryConfig(RegistryCommand):
    """`tunesmith models canary NAME@VERSION --percent P`."""

    ref: Annotated[str, Flag(argument=True)] = Field(..., description="NAME@VERSION to send a share of traffic to")
    percent: Annotated[int, Flag("--percent")] = Field(10, description="share of the alias's requests, 1 to 99")
    alias: Alias = Field(PRODUCTION, description=ALIAS_HELP)
    reason: Reason = Field("", description="why, for the history")


class RollbackConfig(RegistryCommand):
    """`tunesmith models rollback NAME[:ALIAS]`."""

    name: Annotated[str, Flag(argument=True)] = Field(..., description="NAME (production) or NAME:ALIAS")
    reason: Reason = Field("", description="why, for the history")


class AliasConfig(RegistryCommand):
    """`tunesmith models alias NAME[:ALIAS] [VERSION]`."""

    name: Annotated[str, Flag(argument=True)] = Field(
        ..., description="NAME (production) or NAME:ALIAS, e.g. tickets:canary")
    version: Annotated[Optional[int], Flag(argument=True)] = Field(None, description="version the alias points at")
    split: Annotated[Optional[str], Flag("--split")] = Field(None, description="canary weights, e.g. 3=90,4=10")
    fallback: Annotated[Optional[int], Flag("--fallback")] = Field(
        None, description="version served when the primary cannot be loaded")
    reason: Reason = Field("", description="why, for the history")


class HistoryConfig(RegistryCommand):
    """`tunesmith models history NAME[:ALIAS]`."""

    name: Annotated[str, Flag(argument=True)] = Field(..., description="NAME, or NAME:ALIAS for one alias")
    as_json: AsJson = Field(False, description="print JSON instead of a table")


class ReportConfig(RegistryCommand):
    """`tunesmith models report NAME`."""

    name: Annotated[str, Flag(argument=True)] = Field(
        ..., description="NAME: every version of it that answered in the window")
    log: Annotated[Path, Flag("--log")] = Field(Path("tunesmith-request-log.sqlite3"),
                                                description="request log database")
    window: Annotated[str, Flag("--window")] = Field("24h", description="how far back: 24h, 7d...")
    as_json: AsJson = Field(False, description="print JSON instead of a table")
    html: Annotated[Optional[Path], Flag("--html")] = Field(
        None, description="also write an HTML page with a chart per rate over time (inline SVG, opens offline)")
    every: Annotated[Optional[str], Flag("--every")] = Field(
        None, description="width of each chart point's window: 1h, 30m... (default: a twelfth of --window)")


def _aliases(given: Optional[Path]) -> Aliases:
    return Aliases(open_registry(given))


def describe(route: Route) -> str:
    split = ", ".join(f"@{v}: {w}%" for v, w in sorted(route.weights.items())) if route.weights else f"@{route.version}"
    fallback = f" (fallback @{route.fallback})" if route.fallback is not None else ""
    return f"{route.name}@{route.alias} -> {split}{fallback}"


@dataclass
class RouteChanged:
    """An alias moved: `action` (promoted, canary, rolled back, set) and where it points now."""

    action: str
    route: Route

    def summary(self) -> str:
        return f"{self.action}: {describe(self.route)}"


@dataclass
class RoutesShown:
    model: str
    routes: list[Route]

    def summary(self) -> str:
        return "\n".join(describe(r) for r in self.routes) if self.routes else f"{self.model} has no aliases"


def promote(cfg: PromoteConfig, say: Callable[[str], None] = say) -> RouteChanged:
    """Point an alias at one version; with a gate, only if it scores no worse (the table goes to `say`)."""
    aliases = _aliases(cfg.registry)
    candidate = aliases.registry.get(cfg.ref)
    gate_result = None
    if cfg.gate is not None:
        from tunesmith.registry.gate import GateRefused, GateThresholds, run_gate

        current = aliases.route(candidate.name, cfg.alias)
        gate_result = run_gate(aliases.registry, candidate, current, cfg.gate, regression=cfg.regression,
                               thresholds=GateThresholds(max_drop=cfg.max_drop))
        say(gate_result["table"])
        if not gate_result["passed"]:
            if not cfg.force:
                raise GateRefused(f"{candidate.ref} fails the promotion gate: {'; '.join(gate_result['failures'])}",
                                  hint="improve the candidate, or pass --force to override (recorded in the history)")
            gate_result["overridden_by"] = current_actor()
    route = aliases.promote(candidate.ref, cfg.alias, reason=cfg.reason, gate=gate_result and
                            {k: v for k, v in gate_result.items() if k != "table"})
    return RouteChanged("promoted", route)


def canary(cfg: CanaryConfig) -> RouteChanged:
    return RouteChanged("canary", _aliases(cfg.registry).canary(cfg.ref, cfg.percent, cfg.alias, reason=cfg.reason))


def rollback(cfg: RollbackConfig) -> RouteChanged:
    model, alias = parse_alias_ref(cfg.name)
    return RouteChanged("rolled back", _aliases(cfg.registry).rollback(model, alias, reason=cfg.reason))


def set_alias(cfg: AliasConfig) -> RouteChanged | RoutesShown:
    """With only NAME[:ALIAS]: where it points. Otherwise set its version, canary weights and fallback."""
    aliases = _aliases(cfg.registry)
    model, alias = parse_alias_ref(cfg.name)
    current = aliases.route(model, alias)
    if cfg.version is None and cfg.split is None and cfg.fallback is None:
        return RoutesShown(model, aliases.routes(model) if current is None else [current])
    weights = parse_weights(cfg.split) if cfg.split else {}
    version = cfg.version
    if version is None:
        version = max(weights, key=weights.get) if weights else (current.version if current else None)
    if version is None:
        raise ConfigError(f"{cfg.name} has no version yet", hint=f"give the VERSION: tunesmith models alias {cfg.name} N")
    route = aliases.set(model, alias, version, weights=weights,
                        fallback=cfg.fallback if cfg.fallback is not None else (current.fallback if current else None),
                        reason=cfg.reason)
    return RouteChanged("set", route)


def _short(route: dict) -> str:
    if route.get("weights"):
        return " ".join(f"@{v}:{w}%" for v, w in sorted(route["weights"].items()))
    return f"@{route['version']}"


@dataclass
class AliasHistory:
    model: str
    entries: list[dict[str, Any]]
    as_json: bool = False

    def summary(self) -> str:
        if self.as_json:
            return json_text(self.entries)
        if not self.entries:
            return f"{self.model} has no alias history"
        from rich.table import Table

        table = Table("#", "when (UTC)", "alias", "action", "who", "from", "to", "gate", "reason")
        for e in self.entries:
            when = datetime.datetime.fromtimestamp(e["at"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            gate = "-" if not e["gate"] else ("passed" if e["gate"].get("passed") else
                                              f"FAILED, forced by {e['gate'].get('overridden_by', '?')}")
            table.add_row(str(e["seq"]), when, e["alias"], e["action"], e["actor"],
                          "-" if e["from_route"] is None else _short(e["from_route"]), _short(e["to_route"]), gate,
                          e["reason"])
        return table_text(table)


def history(cfg: HistoryConfig) -> AliasHistory:
    """Every alias change of a model, oldest first: who, when, from, to, gate result."""
    model, alias = parse_alias_ref(cfg.name)
    one_alias = ":" in cfg.name or "@" in cfg.name
    return AliasHistory(model, _aliases(cfg.registry).history(model, alias if one_alias else None), cfg.as_json)


@dataclass
class DriftReport:
    name: str
    window: str
    report: dict[str, Any]
    as_json: bool = False
    html: Optional[Path] = None  # the chart page written, if any

    def summary(self) -> str:
        if self.as_json:
            return json_text(self.report)
        wrote = f"wrote {self.html}\n" if self.html is not None else ""
        if not self.report["versions"]:
            return f"{wrote}no logged answers of {self.name} in the last {self.window}"
        from rich.table import Table

        def pct(value):
            return "-" if value is None else f"{value:.0%}"

        table = Table("version", "requests", "json valid", "stop rate", "answer chars", "thumbs down", "baseline")
        for served, v in self.report["versions"].items():
            baseline = ", ".join(f"{k} {pct(x)}" for k, x in v["baseline"].items()) or "-"
            table.add_row(served, str(v["requests"]), pct(v["json_valid"]), pct(v["stop_rate"]),
                          f"{v['answer_chars_mean']:.0f}", pct(v["thumbs_down_rate"]), baseline)
        return wrote + table_text(table)


def report(cfg: ReportConfig) -> DriftReport:
    """Drift per version: JSON validity, stop rate, answer length, thumbs-down rate vs its gate baseline;
    with `html`, also a page charting each rate over the window."""
    import time

    from tunesmith.registry.drift import report as drift_report
    from tunesmith.registry.feedback import RequestLog, RequestLogConfig
    from tunesmith.registry.from_logs import parse_since

    if not cfg.log.is_file():
        raise ConfigError(f"request log {cfg.log} does not exist", where="--log",
                          hint="pass the request_log.path of the `tunesmith serve` that logged the answers")
    request_log = RequestLog(RequestLogConfig(path=cfg.log))
    now = time.time()
    try:
        window_s = now - parse_since(cfg.window, now)
        history_entries = _aliases(cfg.registry).history(cfg.name)
        result = drift_report(request_log, cfg.name, window_s=window_s, history=history_entries, now=now)
        if cfg.html is not None:
            from tunesmith.registry import drift_page
            from tunesmith.registry.drift import baselines, timeline

            every_s = now - parse_since(cfg.every, now) if cfg.every else window_s / 12
            if not 0 < every_s <= window_s:
                raise ConfigError(f"{cfg.every} is not a duration within --window {cfg.window}", where="--every")
            series = timeline(request_log, cfg.name, window_s=window_s, every_s=every_s, now=now)
            drift_page.write(cfg.html, result, series, baselines(history_entries))
    finally:
        request_log.close()
    return DriftReport(cfg.name, cfg.window, result, cfg.as_json, cfg.html)


_HERE = "tunesmith.registry.alias_cli"

ALIAS_VERBS: list[Verb] = [
    Verb("report", ReportConfig, f"{_HERE}:report",
         "Drift per version: JSON validity, stop rate, answer length, thumbs-down rate vs its gate baseline."),
    Verb("promote", PromoteConfig, f"{_HERE}:promote",
         "Point an alias (production by default) at one version; ends any canary split.",
         run_kwargs=lambda: {"say": say}),
    Verb("canary", CanaryConfig, f"{_HERE}:canary",
         "Split an alias's traffic between its current version and a candidate."),
    Verb("rollback", RollbackConfig, f"{_HERE}:rollback",
         "Point the alias back at the version it had before its last change."),
    Verb("alias", AliasConfig, f"{_HERE}:set_alias", "Show an alias, or set its version, canary weights and fallback."),
    Verb("history", HistoryConfig, f"{_HERE}:history",
         "Every alias change of a model, oldest first: who, when, from, to, gate result."),
]
