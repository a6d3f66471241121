"""The command line: parse, call the cycle, print, choose the exit code. No logic here."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from scimsync import config as config_module
from scimsync import log, report
from scimsync.config import Config, ConfigError
from scimsync.cycle import run as cycle_run
from scimsync.cycle.check import check_directory, check_target, token_expiry_warning
from scimsync.cycle.prepare import dry_run
from scimsync.errors import ExitCode, ScimsyncError
from scimsync.state import ChannelLocked, StateError, Store
from scimsync.target.errors import NotScim

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Provision users and groups from an LDAP directory to Atlassian Cloud over SCIM 2.0.\n\n"
    "--config and --log-format may come before or after the command name.",
)
emulate_app = typer.Typer(no_args_is_help=True, help="Run a local SCIM server for trials.")
app.add_typer(emulate_app, name="emulate")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# The global options that may also follow the command name (`scimsync sync --log-format json`).
GLOBAL_VALUE_OPTIONS = ("--config", "-c", "--log-format")

logger = log.get(__name__)


class Settings:
    config_path: Path | None = None
    log_format: log.LogFormat = "text"


settings = Settings()


def print_version(requested: bool) -> None:
    if requested:
        out.print(f"scimsync {importlib.metadata.version('scimsync')}", markup=False)
        raise typer.Exit(ExitCode.OK)


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            # Escaped: rich would take the brackets for markup and print nothing.
            help=escape("Config file [default: $SCIMSYNC_CONFIG or ./scimsync.yaml]"),
        ),
    ] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json")] = "text",
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=print_version, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    if log_format not in ("text", "json"):
        fail(ExitCode.CONFIG, f"--log-format: expected text or json, got {log_format!r}")
    settings.config_path = config
    settings.log_format = "json" if log_format == "json" else "text"
    log.configure(settings.log_format)


def fail(code: ExitCode, message: str) -> NoReturn:
    err.print(f"scimsync: {message}", markup=False)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every error of scimsync's into one line and the exit code it carries."""
    try:
        yield
    except ScimsyncError as exc:
        fail(exc.exit_code, one_line(exc))


def one_line(exc: ScimsyncError) -> str:
    """What the user reads: the error's message, and for two kinds where it points."""
    if isinstance(exc, NotScim):  # target.url names something that is not a SCIM service
        return f"{config_module.locate(settings.config_path)}: {exc}"
    if isinstance(exc, StateError):
        return f"state: {exc}"
    return str(exc)


def load_config() -> Config:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", config_module.InsecureConfigWarning)
        loaded = config_module.load(settings.config_path)
        # Printed once per process: `run` loads its config once, not every cycle.
        config_module.warn_if_insecure(loaded, config_module.locate(settings.config_path))
    for warning in caught:
        err.print(f"scimsync: warning: {warning.message}", markup=False)
    return loaded


@app.command()
def check() -> None:
    """Validate the config, bind to the directory, call the target.

    Example: scimsync --config scimsync.yaml check

    Exit codes: 0 ok, 2 config error (target.url not a SCIM service included),
    4 directory or target unreachable, or the API key refused.
    """
    with user_errors():
        cfg = load_config()
        out.print(f"config      {config_module.locate(settings.config_path)}: ok")
        try:
            summary = check_directory(cfg)
        except ConfigError as exc:  # a key the server disproved: name the file too
            raise ConfigError(f"{config_module.locate(settings.config_path)}: {exc}") from None
        report.print_directory_check(out, summary)
        target = asyncio.run(check_target(cfg))
        report.print_target_check(out, target)


@app.command()
def plan(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as one JSON object")
    ] = False,
    user: Annotated[str | None, typer.Option("--user", help="Only this userName")] = None,
) -> None:
    """Dry run: what a sync would do now. Writes nothing anywhere.

    Example: scimsync --config scimsync.yaml plan --json

    Exit codes: 0 planned, 2 config error, 4 directory or target unreachable,
    5 the state store cannot be opened or written.
    """
    with user_errors():
        cfg = load_config()
        store = Store.open(cfg.state, cfg.channel, readonly=True)  # plan writes nothing
        with store:
            prepared = asyncio.run(dry_run(cfg, store, only_user=user))
    if as_json:
        out.print(json.dumps(report.plan_json(prepared), ensure_ascii=False), markup=False)
    else:
        report.print_plan(out, prepared)
    if prepared.view.unknown:
        raise typer.Exit(ExitCode.CONFIG)  # `--user NAME` names nothing


@app.command()
def sync(
    allow_deletions: Annotated[
        bool, typer.Option("--allow-deletions", help="Apply deletions held by max_deletions, once")
    ] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Provision one user (and its groups) now")
    ] = None,
) -> None:
    """One cycle: read, plan, apply. SIGTERM or SIGINT finishes the operations in flight.

    Example: scimsync --config scimsync.yaml sync --user ann@example.com

    Exit codes: 0 applied, 1 some records failed or not applied (interrupted),
    2 config error, 3 stopped by the safety threshold (sync --allow-deletions applies it),
    4 directory or target unreachable, 5 the state store cannot be opened or written
    (or the channel is held by `run`; then --allow-deletions records an approval, exit 0).
    """
    with user_errors():
        cfg = load_config()
        with Store.open(cfg.state, cfg.channel) as store, contextlib.ExitStack() as holding:
            try:
                holding.enter_context(store.lock())
            except ChannelLocked:
                if not allow_deletions:
                    raise
                # `run` holds the channel: it applies the approval at its next cycle.
                report.print_approval(out, store.approve_held())
                raise typer.Exit(ExitCode.OK) from None
            progress = report.progress_for(err, enabled=settings.log_format == "text")
            with stop_on_signals() as stopping:
                cycle = asyncio.run(
                    cycle_run.sync(
                        cfg,
                        store,
                        only_user=user,
                        allow_deletions=allow_deletions,
                        progress=progress,
                        should_stop=stopping.is_set,
                    )
                )
    report.print_cycle(out, cycle)
    raise typer.Exit(cycle.exit_code)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the event, as under `run`; a second one stops at once."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        logger.info("stopping after the operations in flight", signal=signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def run() -> None:
    """Daemon: a cycle every `interval` seconds; SIGTERM finishes the operation in flight.

    Example: scimsync --config scimsync.yaml --log-format json run

    Exit codes: 0 stopped by SIGTERM or SIGINT, 2 config error.
    """
    from scimsync import daemon  # noqa: PLC0415 (only `run` pays for its imports)

    with user_errors():
        cfg = load_config()
        raise typer.Exit(daemon.run(cfg))


@app.command()
def status() -> None:
    """Last cycles, pending and quarantined failures, deletions held back.

    Example: scimsync --config scimsync.yaml status

    Exit codes: 0 shown, 2 config error, 5 the state store cannot be opened or written.
    """
    with user_errors():
        cfg = load_config()
        with Store.open(cfg.state, cfg.channel) as store:
            report.print_status(out, store, token_expiry_warning(cfg.target, date.today()))


@app.command()
def audit(
    since: Annotated[
        str | None, typer.Option("--since", help="ISO time or a duration such as 2h, 3d")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 1000,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user: its userName or source id")
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Only this group: its name or source id")
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Instead: delete entries and runs older than audit_retention_days, as `run` "
            "does daily",
        ),
    ] = False,
) -> None:
    """The audit log: every operation with its cycle, result and cause.

    Example: scimsync --config scimsync.yaml audit --since 2h --limit 50

    Exit codes: 0 shown (or pruned), 2 config or usage error, 5 the state store cannot be
    opened or written.
    """
    if prune and (since or user or group):
        # `--prune --since 30d` would read as "prune what is older than 30 days".
        fail(ExitCode.CONFIG, "--prune: give it without --since, --user and --group")
    with user_errors():
        start = parse_since(since) if since else None
        cfg = load_config()
        with Store.open(cfg.state, cfg.channel) as store:
            if prune:
                before = datetime.now(UTC) - timedelta(days=cfg.audit_retention_days)
                entries, runs = store.prune(before)
                report.print_pruned(out, entries, runs, before)
                return
            rows = store.audit_log(since=start, limit=limit, user=user, group=group)
            report.print_audit(out, rows)


@app.command()
def reset(
    failed: Annotated[
        bool, typer.Option("--failed", help="Also retry quarantined and backed-off records now")
    ] = False,
) -> None:
    """Forget watermarks so the next cycle is a full reconciliation.

    Example: scimsync --config scimsync.yaml reset --failed

    Exit codes: 0 done, 2 config error, 5 the state store cannot be opened or written.
    """
    with user_errors():
        cfg = load_config()
        with Store.open(cfg.state, cfg.channel) as store:
            store.reset()
            out.print("next cycle: full reconciliation")
            if failed:
                out.print(f"failed records released: {store.reset_failures()}")


@emulate_app.command("atlassian")
def emulate_atlassian(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks a free port")],
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="SCIMSYNC_EMULATOR_TOKEN", help="the bearer token clients send"
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="read the token from this file")
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="not loopback: a warning, it serves plain HTTP")
    ] = "127.0.0.1",
    rename: Annotated[str, typer.Option("--rename", help="allowed or immutable")] = "allowed",
    user_name: Annotated[
        str, typer.Option("--user-name", help="mutable or immutable (refuse userName changes)")
    ] = "mutable",
    hide_inactive: Annotated[
        bool,
        typer.Option("--hide-inactive", help="leave inactive users out of listings and filters"),
    ] = False,
    rate: Annotated[float | None, typer.Option("--rate", help="requests/s before 429")] = None,
    latency_ms: Annotated[float, typer.Option("--latency-ms")] = 0.0,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", min=0.0, max=1.0, help="share of 5xx / dropped")
    ] = 0.0,
    lost_response_rate: Annotated[
        float,
        typer.Option("--lost-response-rate", min=0.0, max=1.0, help="POSTs applied, answer lost"),
    ] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", help="for reproducible faults")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Keep the data in this file")] = None,
) -> None:
    """A local server that behaves as Atlassian's SCIM API documents.

    Example: scimsync emulate atlassian --port 8080 --token-file token.txt --data emulator.json

    Exit codes: 0 stopped by SIGTERM or SIGINT, 2 bad option, token or data file.
    """
    from scimsync import emulator  # noqa: PLC0415 (only `emulate` pays for starlette)
    from scimsync.emulator.running import token_from_file  # noqa: PLC0415

    # The environment is a default: --token-file given on the command line overrides it.
    # By name: typer's Click is vendored, its ParameterSource no public import.
    token_source = ctx.get_parameter_source("token")
    from_environment = token_source is not None and token_source.name == "ENVIRONMENT"
    if token_file is not None:
        if token is not None and not from_environment:
            fail(ExitCode.CONFIG, "--token and --token-file: give one of them, not both")
        try:
            token = token_from_file(token_file)
        except ValueError as exc:
            fail(ExitCode.CONFIG, f"--token-file {exc}")
    elif token is None:
        fail(ExitCode.CONFIG, "no token: give --token, --token-file or SCIMSYNC_EMULATOR_TOKEN")
    elif not token.strip():
        source = "SCIMSYNC_EMULATOR_TOKEN" if from_environment else "--token"
        fail(ExitCode.CONFIG, f"{source}: the bearer token is empty")

    if rename not in ("allowed", "immutable"):
        fail(ExitCode.CONFIG, f"--rename: expected allowed or immutable, got {rename!r}")
    mode: Literal["allowed", "immutable"] = "immutable" if rename == "immutable" else "allowed"
    emulator.serve(
        port,
        token,
        host=host,
        rename=mode,
        user_name=user_name,
        hide_inactive=hide_inactive,
        rate=rate,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        lost_response_rate=lost_response_rate,
        seed=seed,
        data_file=data,
    )


def parse_since(value: str) -> datetime:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(
            ExitCode.CONFIG,
            f"--since: expected an ISO time or a duration such as 2h, got {value!r}",
        )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def hoist_global_options(args: list[str]) -> list[str]:
    """Move --config and --log-format given after the command name in front of it.

    Click only takes a group's options before the command; users also write them after.
    """
    position = 0
    while position < len(args) and args[position].startswith("-") and args[position] != "--":
        takes_value = args[position] in GLOBAL_VALUE_OPTIONS
        position += 2 if takes_value else 1
    command_end = position + 1  # just past the command name
    hoisted: list[str] = []
    rest: list[str] = []
    index = command_end
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        if arg in GLOBAL_VALUE_OPTIONS and index + 1 < len(args):
            hoisted.extend(args[index : index + 2])
            index += 2
            continue
        if arg.startswith(("--config=", "--log-format=")):
            hoisted.append(arg)
        else:
            rest.append(arg)
        index += 1
    if not hoisted:
        return args
    return args[:position] + hoisted + args[position:command_end] + rest


def main() -> None:
    try:
        app(args=hoist_global_options(sys.argv[1:]))
    except KeyboardInterrupt:
        err.print("scimsync: interrupted")
        sys.exit(ExitCode.INTERRUPTED)
