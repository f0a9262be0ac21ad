"""What every API command shares: connection options, output format, progress, and exit codes.

Exit codes: 0 done; 1 the server (or S3, or a checksum) said no, with one readable line on stderr;
2 the command line or the configuration is wrong.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, TypeVar

import typer
from botocore.exceptions import BotoCoreError, ClientError
from typer.core import TyperGroup

from ims.artifacts.s3 import ArtifactError
from ims.cli.output import OutputFormat, render, table_width
from ims.cli.progress import transfer_progress
from ims.client.config import ClientConfig, ConfigError, load_config
from ims.client.http import ImsApiError
from ims.client.recipes import RecipeError
from ims.client.resources import Ims
from ims.client.transfer import TrackedStore, TransferError

F = TypeVar("F", bound=Callable[..., Any])

CONNECTION_PANEL = "Connection (or IMS_API_URL, IMS_TOKEN, IMS_TOKEN_FILE, IMS_CA_BUNDLE, config file)"


class BoolWord(StrEnum):
    """`True`/`False` as words, so `cray ims ... --enable-debug False` lines keep working."""

    true = "true"
    false = "false"


def as_bool(word: BoolWord | bool | None) -> bool | None:
    if word is None or isinstance(word, bool):
        return word
    return word is BoolWord.true


# Boolean options are flags (`--enable-debug`, `--no-enable-debug`); `cray`'s form with a word after them
# (`--enable-debug True`, `--wait=false`) is rewritten into the flag before parsing.
BOOL_OPTIONS = frozenset({"--enable-debug", "--ssh-containers-jail", "--require-dkms", "--wait", "--wide"})
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def cray_bool_words(args: Sequence[str]) -> list[str]:
    """`--opt true` -> `--opt`, `--opt false` -> `--no-opt` (also `--opt=WORD`), for the BOOL_OPTIONS."""
    out: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        item = items[index]
        if item == "--":
            out += items[index:]
            break
        name, eq, value = item.partition("=")
        if name in BOOL_OPTIONS:
            if not eq and index + 1 < len(items) and items[index + 1].lower() in _TRUE_WORDS | _FALSE_WORDS:
                value = items[index + 1]
                index += 1
            elif not eq:
                value = "true"
            if value.lower() in _TRUE_WORDS:
                out.append(name)
            elif value.lower() in _FALSE_WORDS:
                out.append("--no-" + name[2:])
            else:
                raise typer.BadParameter(f"{value!r} is not true or false", param_hint=name)
        else:
            out.append(item)
        index += 1
    return out


class ImsGroup(TyperGroup):
    """The root command group: accepts `cray`'s boolean words before the options are parsed."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            args = cray_bool_words(args)
        except typer.BadParameter as exc:
            exc.ctx = ctx
            raise
        return super().parse_args(ctx, args)


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """`KEY=VALUE` options into a dict; anything else is a usage error (exit 2)."""
    pairs: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


@dataclass
class Session:
    config: ClientConfig
    fmt: OutputFormat
    _ims: Ims | None = field(default=None, repr=False)
    wide: bool = False  # tables: every column, however wide the terminal

    @property
    def ims(self) -> Ims:
        if self._ims is None:
            self._ims = Ims(self.config.client())
        return self._ims

    def show(self, data: Any, columns: Sequence[str] = ()) -> None:
        width = None if self.wide else table_width()
        text = render(data, self.fmt, columns, width=width, on_drop=_dropped)
        if text:
            typer.echo(text)

    @contextmanager
    def store(self) -> Iterator[TrackedStore]:
        """S3 for the artifact helpers, with progress bars when stderr is a terminal."""
        s3 = self.config.s3.s3_config()
        with transfer_progress() as progress:
            yield TrackedStore(s3, progress)

    def close(self) -> None:
        if self._ims is not None:
            self._ims.close()


def _dropped(columns: Sequence[str]) -> None:
    note(
        f"({len(columns)} column{'s' if len(columns) != 1 else ''} left out to fit the terminal: "
        f"{', '.join(columns)}; --wide shows all)"
    )


def error_line(exc: BaseException) -> str:
    """One line for stderr; never the request headers (they carry the token)."""
    if isinstance(exc, ImsApiError):
        if exc.status == 0:
            text = exc.detail
        else:
            title = exc.title or _phrase(exc.status)
            where = f" ({exc.method} {exc.url})" if exc.method else ""
            text = f"{exc.status} {title}{where}"
            if exc.detail and exc.detail != title:
                text += f": {exc.detail}"
            if exc.errors:
                text += f" [{_compact_errors(exc.errors)}]"
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"S3 {exc.operation_name} failed: {error.get('Code', '')} {error.get('Message', '')}".rstrip()
    else:
        text = str(exc) or type(exc).__name__
    return "ims: " + " ".join(_without_library_prefixes(text).split())


# pydantic puts "Value error, " (or "Assertion failed, ") before a validator's own message.
_LIBRARY_PREFIXES = re.compile(r"\b(?:Value error|Assertion failed), ")


def _without_library_prefixes(text: str) -> str:
    return _LIBRARY_PREFIXES.sub("", text)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _compact_errors(errors: Any, prefix: str = "") -> str:
    """`{"link": {"path": ["msg"]}}` -> `link.path: msg`, the marshmallow shape on one line."""
    if isinstance(errors, dict):
        return "; ".join(
            _compact_errors(value, f"{prefix}.{key}" if prefix else str(key)) for key, value in errors.items()
        )
    if isinstance(errors, list) and all(not isinstance(item, dict | list) for item in errors):
        text = " ".join(str(item) for item in errors)
    elif isinstance(errors, list):
        text = "; ".join(_compact_errors(item) for item in errors)
    else:
        text = str(errors)
    return f"{prefix}: {text}" if prefix else text


_FAILURES: tuple[type[BaseException], ...] = (
    ImsApiError,
    TransferError,
    RecipeError,
    ArtifactError,
    ClientError,
    BotoCoreError,
    TimeoutError,
    OSError,
)


def _connection_parameters(with_format: bool) -> list[inspect.Parameter]:
    def option(name: str, annotation: Any, info: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)

    params = [
        option(
            "api_url",
            str | None,
            typer.Option(
                None,
                "--api-url",
                help="IMS base URL (default http://127.0.0.1:9100).",
                rich_help_panel=CONNECTION_PANEL,
            ),
        ),
        option(
            "token",
            str | None,
            typer.Option(
                None,
                "--token",
                help="Bearer token (prefer --token-file: options show up in `ps`).",
                rich_help_panel=CONNECTION_PANEL,
            ),
        ),
        option(
            "token_file",
            str | None,
            typer.Option(
                None,
                "--token-file",
                help="File holding the bearer token (plain, or the JSON `cray` keeps).",
                rich_help_panel=CONNECTION_PANEL,
            ),
        ),
        option(
            "ca_bundle",
            str | None,
            typer.Option(
                None,
                "--ca-bundle",
                help="CA certificates that sign the server's TLS certificate.",
                rich_help_panel=CONNECTION_PANEL,
            ),
        ),
    ]
    if with_format:
        params.append(
            option(
                "wide",
                bool,
                typer.Option(
                    False, "--wide/--no-wide", metavar="", help="Tables: every column, even wider than the terminal."
                ),
            )
        )
        params.append(
            option(
                "output_format",
                OutputFormat | None,
                typer.Option(
                    None,
                    "--format",
                    case_sensitive=False,
                    help="Output: table, json or toml (default IMS_FORMAT, else table).",
                ),
            )
        )
    return params


def api_command(app: typer.Typer, name: str, *, output: bool = True) -> Callable[[F], F]:
    """Register `func(session, ...)` as `name`, adding the connection and `--format` options to it."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [param for param in signature.parameters.values() if param.name != "session"]

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            try:
                config = load_config(
                    api_url=kwargs.pop("api_url"),
                    token=kwargs.pop("token"),
                    token_file=kwargs.pop("token_file"),
                    ca_bundle=kwargs.pop("ca_bundle"),
                    output_format=_format_value(kwargs.pop("output_format", None)),
                )
                fmt = _output_format(config.format)
                _check_api_url(config.api_url)
                if not config.timeout > 0:
                    raise ConfigError(
                        f"timeout (IMS_TIMEOUT) must be a positive number of seconds, not {config.timeout:g}"
                    )
                if config.retries < 1:
                    raise ConfigError(f"retries (IMS_RETRIES) must be at least 1, not {config.retries}")
            except (ConfigError, ValueError) as exc:
                typer.echo(f"ims: {exc}", err=True)
                raise typer.Exit(2) from None
            session = Session(config, fmt, wide=bool(kwargs.pop("wide", False)))
            try:
                func(session, **kwargs)
            except ConfigError as exc:
                typer.echo(f"ims: {exc}", err=True)
                raise typer.Exit(2) from None
            except ImsApiError as exc:
                if exc.status == 0 and exc.detail.startswith("cannot reach IMS"):
                    reason = exc.detail.partition(":")[2].strip() or "no answer"
                    typer.echo(f"ims: cannot reach IMS at {config.api_url} ({reason})", err=True)
                else:
                    typer.echo(error_line(exc), err=True)
                raise typer.Exit(1) from None
            except _FAILURES as exc:
                typer.echo(error_line(exc), err=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                typer.echo("ims: interrupted", err=True)
                raise typer.Exit(130) from None
            finally:
                session.close()

        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own, *_connection_parameters(output)]
        )
        # Typer reads annotations from the signature above; the original's string annotations would not resolve.
        command.__annotations__ = {}
        app.command(name)(command)
        return func

    return decorate


def _output_format(text: str) -> OutputFormat:
    try:
        return OutputFormat(text.lower())
    except ValueError:
        raise ConfigError(
            f"output format {text!r} is not one of {', '.join(fmt.value for fmt in OutputFormat)}"
        ) from None


def _check_api_url(url: str) -> None:
    """The base URL has no version: `/v3` is the client's to add. A URL that ends in one is a usage error."""
    trimmed = url.rstrip("/")
    match = re.search(r"/v[23]$", trimmed)
    if match:
        raise ConfigError(
            f"the API URL {url} ends in {match.group(0)}: give the base URL without it "
            f"(IMS_API_URL={trimmed[: match.start()]} or --api-url {trimmed[: match.start()]}); the version is added per call"
        )


def _format_value(value: OutputFormat | str | None) -> str | None:
    if value is None:
        return None
    return value.value if isinstance(value, OutputFormat) else str(value)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def note(message: str) -> None:
    """Chatter for people: shown on a terminal, silent when stderr is piped."""
    if stderr_is_terminal():
        typer.echo(message, err=True)


def warn(message: str) -> None:
    """Something the user should know although the command goes on: always shown, on stderr."""
    typer.echo(f"ims: warning: {message}", err=True)
