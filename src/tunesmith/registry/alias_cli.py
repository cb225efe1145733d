"""`tunesmith models promote|canary|rollback|alias|history`: move aliases, with an audit trail.

A running `tunesmith serve` that routes registry models reads the alias table every
`poll_interval` seconds, so each of these commands reaches live traffic without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunesmith.registry.aliases import PRODUCTION, Aliases, Route, current_actor, parse_alias_ref, parse_weights
from tunesmith.registry.cli import RegistryOpt, console, registry_path

AliasOpt = typer.Option(PRODUCTION, "--alias", help="Alias to move (default: production, what NAME alone means).")


def _aliases(given: Optional[Path]) -> Aliases:
    from tunesmith.registry.store import Registry

    return Aliases(Registry(registry_path(given)))


def _describe(route: Route) -> str:
    split = ", ".join(f"@{v}: {w}%" for v, w in sorted(route.weights.items())) if route.weights else f"@{route.version}"
    fallback = f" (fallback @{route.fallback})" if route.fallback is not None else ""
    return f"{route.name}@{route.alias} -> {split}{fallback}"


def promote(ref: str = typer.Argument(..., help="NAME@VERSION to put into production."),
            alias: str = AliasOpt,
            gate: Optional[Path] = typer.Option(None, "--gate", help="Eval set (JSONL): the candidate must not score "
                                                "worse than the current version beyond the thresholds."),
            regression: Optional[Path] = typer.Option(None, "--regression", help="Regression prompts the candidate "
                                                      "must keep passing (with --gate)."),
            max_drop: float = typer.Option(0.02, "--max-drop", help="Largest allowed fall of any score "
                                           "(absolute, e.g. 0.02 = two points of accuracy)."),
            force: bool = typer.Option(False, "--force", help="Promote even when the gate refuses; recorded with "
                                       "your name in the history."),
            reason: str = typer.Option("", "--reason", help="Why, for the history."),
            registry: Optional[Path] = RegistryOpt) -> None:
    """Point an alias (production by default) at one version; ends any canary split."""
    aliases = _aliases(registry)
    candidate = aliases.registry.get(ref)
    gate_result = None
    if gate is not None:
        from tunesmith.registry.gate import GateRefused, GateThresholds, run_gate

        current = aliases.route(candidate.name, alias)
        gate_result = run_gate(aliases.registry, candidate, current, gate, regression=regression,
                               thresholds=GateThresholds(max_drop=max_drop))
        console.print(gate_result["table"], markup=False, highlight=False)
        if not gate_result["passed"]:
            if not force:
                raise GateRefused(f"{candidate.ref} fails the promotion gate: {'; '.join(gate_result['failures'])}",
                                  hint="improve the candidate, or pass --force to override (recorded in the history)")
            gate_result["overridden_by"] = current_actor()
    route = aliases.promote(candidate.ref, alias, reason=reason, gate=gate_result and
                            {k: v for k, v in gate_result.items() if k != "table"})
    console.print(f"promoted: {_describe(route)}")


def canary(ref: str = typer.Argument(..., help="NAME@VERSION to send a share of traffic to."),
           percent: int = typer.Option(10, "--percent", help="Share of the alias's requests, 1 to 99."),
           alias: str = AliasOpt, reason: str = typer.Option("", "--reason"),
           registry: Optional[Path] = RegistryOpt) -> None:
    """Split an alias's traffic between its current version and a candidate."""
    console.print(f"canary: {_describe(_aliases(registry).canary(ref, percent, alias, reason=reason))}")


def rollback(name: str = typer.Argument(..., help="NAME (production) or NAME:ALIAS."),
             reason: str = typer.Option("", "--reason"), registry: Optional[Path] = RegistryOpt) -> None:
    """Point the alias back at the version it had before its last change."""
    model, alias = parse_alias_ref(name)
    console.print(f"rolled back: {_describe(_aliases(registry).rollback(model, alias, reason=reason))}")


def set_alias(name: str = typer.Argument(..., help="NAME (production) or NAME:ALIAS, e.g. tickets:canary."),
              version: Optional[int] = typer.Argument(None, help="Version the alias points at."),
              split: Optional[str] = typer.Option(None, "--split", help="Canary weights, e.g. 3=90,4=10."),
              fallback: Optional[int] = typer.Option(None, "--fallback", help="Version served when the primary "
                                                     "cannot be loaded."),
              reason: str = typer.Option("", "--reason"), registry: Optional[Path] = RegistryOpt) -> None:
    """Show an alias, or set its version, canary weights and fallback."""
    aliases = _aliases(registry)
    model, alias = parse_alias_ref(name)
    current = aliases.route(model, alias)
    if version is None and split is None and fallback is None:
        if current is None:
            routes = aliases.routes(model)
            console.print("\n".join(_describe(r) for r in routes) if routes else f"{model} has no aliases")
        else:
            console.print(_describe(current))
        return
    weights = parse_weights(split) if split else {}
    if version is None:
        version = max(weights, key=weights.get) if weights else (current.version if current else None)
    if version is None:
        raise typer.BadParameter("give the VERSION the alias points at")
    route = aliases.set(model, alias, version, weights=weights,
                        fallback=fallback if fallback is not None else (current.fallback if current else None),
                        reason=reason)
    console.print(f"set: {_describe(route)}")


def history(name: str = typer.Argument(..., help="NAME, or NAME:ALIAS for one alias."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
            registry: Optional[Path] = RegistryOpt) -> None:
    """Every alias change of a model, oldest first: who, when, from, to, gate result."""
    model, alias = parse_alias_ref(name)
    entries = _aliases(registry).history(model, None if ":" not in name and "@" not in name else alias)
    if as_json:
        console.print_json(json.dumps(entries))
        return
    table = Table("#", "when (UTC)", "alias", "action", "who", "from", "to", "gate", "reason")
    import datetime

    for e in entries:
        when = datetime.datetime.fromtimestamp(e["at"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        gate = "-" if not e["gate"] else ("passed" if e["gate"].get("passed") else
                                          f"FAILED, forced by {e['gate'].get('overridden_by', '?')}")
        table.add_row(str(e["seq"]), when, e["alias"], e["action"], e["actor"],
                      "-" if e["from_route"] is None else _short(e["from_route"]), _short(e["to_route"]), gate,
                      e["reason"])
    console.print(table if entries else f"{model} has no alias history")


def _short(route: dict) -> str:
    if route.get("weights"):
        return " ".join(f"@{v}:{w}%" for v, w in sorted(route["weights"].items()))
    return f"@{route['version']}"


def report(name: str = typer.Argument(..., help="NAME: every version of it that answered in the window."),
           log: Path = typer.Option(Path("tunesmith-request-log.sqlite3"), "--log", help="Request log database."),
           window: str = typer.Option("24h", "--window", help="How far back: 24h, 7d..."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
           html: Optional[Path] = typer.Option(None, "--html", help="Also write an HTML page with a chart per rate "
                                               "over time (inline SVG, opens offline)."),
           every: Optional[str] = typer.Option(None, "--every", help="Width of each chart point's window: 1h, "
                                               "30m... (default: a twelfth of --window)."),
           registry: Optional[Path] = RegistryOpt) -> None:
    """Drift per version: JSON validity, stop rate, answer length, thumbs-down rate vs its gate baseline."""
    import time

    from tunesmith.registry.drift import report as drift_report
    from tunesmith.registry.feedback import RequestLog, RequestLogConfig
    from tunesmith.registry.from_logs import parse_since

    if not log.is_file():
        raise typer.BadParameter(f"request log {log} does not exist", param_hint="--log")
    request_log = RequestLog(RequestLogConfig(path=log))
    now = time.time()
    window_s = now - parse_since(window, now)
    history_entries = _aliases(registry).history(name)
    result = drift_report(request_log, name, window_s=window_s, history=history_entries, now=now)
    if html is not None:
        from tunesmith.registry import drift_page
        from tunesmith.registry.drift import baselines, timeline

        every_s = now - parse_since(every, now) if every else window_s / 12
        if not 0 < every_s <= window_s:
            raise typer.BadParameter(f"{every} is not a duration within --window {window}", param_hint="--every")
        series = timeline(request_log, name, window_s=window_s, every_s=every_s, now=now)
        drift_page.write(html, result, series, baselines(history_entries))
        if not as_json:
            console.print(f"wrote {html}", markup=False, highlight=False)
    request_log.close()
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("version", "requests", "json valid", "stop rate", "answer chars", "thumbs down", "baseline")

    def pct(value):
        return "-" if value is None else f"{value:.0%}"

    for served, v in result["versions"].items():
        baseline = ", ".join(f"{k} {pct(x)}" for k, x in v["baseline"].items()) or "-"
        table.add_row(served, str(v["requests"]), pct(v["json_valid"]), pct(v["stop_rate"]),
                      f"{v['answer_chars_mean']:.0f}", pct(v["thumbs_down_rate"]), baseline)
    console.print(table if result["versions"] else f"no logged answers of {name} in the last {window}")


def register_lifecycle_commands(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("promote")(promote)
    app.command("canary")(canary)
    app.command("rollback")(rollback)
    app.command("alias")(set_alias)
    app.command("history")(history)
