"""The ``secureml`` command line: parse, call :mod:`secureml.key_management`, map errors
to exit codes. Nothing here decides policy.

Exit codes: 0 ok, 1 operational error, 2 usage error, 3 not found, 4 permission denied or
authentication, 5 Vault unavailable, 6 invalid ciphertext. Errors are one line on stderr
(``--debug`` shows the traceback) and never contain a secret. Heavy modules (the library,
hvac, rich) are imported only by the commands that need them, so ``--help`` is quick.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, ClassVar, NoReturn, cast

import click

if TYPE_CHECKING:
    from .key_management import Encoding, KeyManager

__all__ = ["cli", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_NOT_FOUND, EXIT_DENIED, EXIT_UNAVAILABLE, EXIT_INVALID_CIPHERTEXT = 3, 4, 5, 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

#: The longest key the library makes or derives (HKDF-SHA256's limit), as the options
#: bound it (said as --bytes, not as the library's key_bytes).
_MAX_BYTES = 255 * 32
#: Files at least this large get a progress bar (on a terminal).
PROGRESS_FROM_BYTES = 4 << 20
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdwy]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}


def exit_code(exc: BaseException) -> int:
    """The exit code for an error the library (or the OS) raised."""
    from .key_management import errors

    ordered: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = [
        (errors.InvalidCiphertextError, EXIT_INVALID_CIPHERTEXT),
        (errors.VaultUnavailableError, EXIT_UNAVAILABLE),
        ((errors.PermissionDeniedError, errors.AuthenticationError), EXIT_DENIED),
        (errors.SecretNotFoundError, EXIT_NOT_FOUND),
        ((errors.ConfigurationError, ValueError, TypeError), EXIT_USAGE),
    ]
    for kinds, code in ordered:
        if isinstance(exc, kinds):
            return code
    return EXIT_ERROR


def _utf8(raw: bytes) -> str:
    """``raw`` as text; if it is not UTF-8, an error that quotes none of it (a
    UnicodeDecodeError names the offending byte, and --debug would print it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            "the input is not UTF-8 text; pass --binary to store it as bytes"
        ) from None


#: What a refused ciphertext's ``reason`` means, as the command line says it.
_CIPHERTEXT_REASONS = {
    "not-secureml": "the input is not a secureml file (it does not start with a secureml header)",
    "truncated": "the input is truncated: it ends inside the secureml header",
    "unauthenticated": "authentication failed: wrong --aad, wrong key, or the data was "
    "altered or cut short",
}


def _message(exc: BaseException) -> str:
    from .key_management._envelope import OPAQUE
    from .key_management.errors import InvalidCiphertextError, KeyManagementError

    if isinstance(exc, InvalidCiphertextError) and str(exc) == OPAQUE:
        return _CIPHERTEXT_REASONS.get(exc.reason, OPAQUE)
    if isinstance(exc, UnicodeError):  # its message quotes the offending bytes
        return "the input is not UTF-8 text; pass --binary to store it as bytes"
    if isinstance(exc, KeyManagementError) and exc.cli_message:
        return " ".join(exc.cli_message.split())  # in the command line's words
    if isinstance(exc, (KeyManagementError, OSError, ValueError, TypeError)):
        return " ".join(str(exc).split()) or type(exc).__name__
    # Anything else could carry anything: say what it was, not what it holds.
    return f"unexpected {type(exc).__name__} (run with --debug for details)"


class Options:
    """The global options, and the manager built from them on first use. (A plain
    class: dataclasses would cost --help ~10 ms of imports.)"""

    def __init__(
        self,
        *,
        vault_url: str | None,
        vault_path: str,
        mount: str,
        namespace: str | None,
        ca_cert: str | None,
        timeout: float | None,
        retries: int | None,
        env_fallback: bool,
        dev_defaults: bool,
        json: bool,
        debug: bool,
        declared_keys: tuple[str, ...] = (),
        declared_transit_keys: tuple[str, ...] = (),
    ) -> None:
        self.vault_url, self.vault_path, self.mount = vault_url, vault_path, mount
        self.declared_keys, self.declared_transit_keys = declared_keys, declared_transit_keys
        self.namespace, self.ca_cert = namespace, ca_cert
        self.timeout, self.retries = timeout, retries
        self.env_fallback, self.dev_defaults = env_fallback, dev_defaults
        self.json, self.debug = json, debug
        self._manager: Any = None
        self.events: list[Any] = []  # the manager's AccessEvents (never a value)

    def manager(self) -> KeyManager:
        if self._manager is None:
            from .key_management import KeyManager

            _route_library_logs(debug=self.debug)

            self._manager = KeyManager(
                vault_token=_token_file(self.vault_url),
                vault_url=self.vault_url,
                vault_path=self.vault_path,
                use_env_fallback=self.env_fallback,
                use_default_fallback=self.dev_defaults,
                vault_mount=self.mount,
                vault_namespace=self.namespace,
                vault_ca_cert=self.ca_cert,
                timeout=self.timeout,
                retries=self.retries,
                declared_keys=self.declared_keys,
                declared_transit_keys=self.declared_transit_keys,
                audit_hook=self.events.append,
            )
        return self._manager  # type: ignore[no-any-return]


def _token_file(vault_url: str | None) -> str | None:
    """The token ``bao login`` / ``vault login`` left in ``~/.vault-token``: used by the
    command line (never the library) when a Vault address is set and the environment
    holds no credentials, as the vault and bao commands do. Only a regular file of this
    user's that others cannot read, of a token's size; why one was not used is said
    with the error that follows (``_TOKEN_FILE_NOTE``)."""
    from .key_management._config import URL_VARS
    from .key_management._credentials import env_reference

    _TOKEN_FILE_NOTE.clear()
    if env_reference(os.environ) is not None:
        return None
    if vault_url is None and not any(os.environ.get(v, "").strip() for v in URL_VARS):
        return None
    path = os.path.join(os.path.expanduser("~"), ".vault-token")
    try:
        # Non-blocking: a FIFO planted there must not hang the command.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None  # none there: nothing to say
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        why = None
        if not stat.S_ISREG(info.st_mode):
            why = "it is not a regular file"
        elif info.st_uid != os.getuid():
            why = "another user owns it"
        elif info.st_mode & 0o077:
            why = f"other users may read it (chmod 600 {path})"
        elif info.st_size > _MAX_TOKEN_FILE_BYTES:
            why = "it is too large to hold a token"
        if why is not None:
            _TOKEN_FILE_NOTE.append(f"{path} was not used: {why}")
            return None
        raw = source.read(_MAX_TOKEN_FILE_BYTES + 1)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        _TOKEN_FILE_NOTE.append(f"{path} was not used: it is not text")
        return None
    return token or None


#: Why ~/.vault-token was not used, for the error line (at most one entry).
_TOKEN_FILE_NOTE: list[str] = []
_MAX_TOKEN_FILE_BYTES = 16 * 1024


class _Commands(click.Group):
    """Turns library errors into one line on stderr and an exit code; a sub-group
    (``keys``, ``transit``) takes the global options after its name too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self, _Root):
            _with_late_globals(self)

    def invoke(self, ctx: click.Context) -> Any:
        root = isinstance(self, _Root)
        if root:
            _HELD_NOTES.clear()
        try:
            done = super().invoke(ctx)
            if root:
                _say_held_notes()  # it succeeded: say what it fell back on, if anything
            return done
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): nothing to report. Point stdout at
            # /dev/null so the interpreter's final flush does not complain either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("secureml: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except _Terminated as stop:
            # Raised where the signal landed, so every `with` on the way out ran: no
            # half-written temporary file of plaintext is left beside a destination.
            click.echo(f"secureml: stopped by signal {stop.signum}", err=True)
            ctx.exit(128 + stop.signum)
        except Exception as exc:
            options = ctx.find_object(Options)
            if options is not None and options.debug:
                raise
            text = _message(exc)
            if _TOKEN_FILE_NOTE:  # why ~/.vault-token was not used: part of this line
                text += f" ({_TOKEN_FILE_NOTE[-1]})"
            click.echo(_for_terminal(f"secureml: error: {text}"), err=True)
            ctx.exit(exit_code(exc))


pass_options = click.make_pass_decorator(Options)


class _Root(_Commands):
    """The ``secureml`` group: click's usage errors as one line, not its usage block."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `secureml` alone: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"secureml: error: {_usage_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("secureml: aborted", err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


class _Duration(click.ParamType[float, Any]):
    """Seconds from text, read by ``parse`` (whose errors name the option), at least
    ``least`` seconds."""

    def __init__(self, name: str, parse: Callable[[str], float], least: float) -> None:
        self.name = name
        self._parse = parse
        self._least = least

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = self._parse(str(value))
        except OverflowError:
            self.fail(f"{value!r} is too long", param, ctx)
        except (click.BadParameter, ValueError, TypeError) as exc:
            message = exc.message if isinstance(exc, click.BadParameter) else str(exc)
            self.fail(message, param, ctx)
        if seconds < self._least:
            self.fail(f"{value!r} is under {self._least:g} s", param, ctx)
        return seconds


class _SegmentSize(click.ParamType[int, Any]):
    """A segment size: bytes, or with a binary unit (``64KiB``, ``1MiB``; ``K``/``M``
    too), within what the library's ``segment_size=`` takes."""

    name = "size"
    _UNITS: ClassVar[dict[str, int]] = {
        "": 1,
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
    }

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from .key_management._validate import check_segment_size

        if isinstance(value, int):
            return value
        text = str(value).strip()
        digits = len(text) - len(text.lstrip("0123456789"))
        unit = self._UNITS.get(text[digits:].strip().lower())
        if not digits or digits > 12 or unit is None:
            self.fail(f"{value!r} is not a size (e.g. 65536, 64KiB, 1MiB)", param, ctx)
        try:
            return check_segment_size(int(text[:digits]) * unit)
        except ValueError as exc:
            self.fail(str(exc).replace("segment_size must be", "must be"), param, ctx)


def _timeout_seconds(text: str) -> float:
    """A timeout as the timeout variables take it: ``5``, ``5s``, ``500ms``."""
    from .key_management._config import parse_duration

    try:
        return parse_duration(text, "--timeout")
    except ValueError as exc:  # the library names the variable; here, the value
        raise ValueError(str(exc).replace(f"--timeout={text!r} is", f"{text!r} is")) from None


def _global_options(*, late: bool = False) -> list[click.Option]:
    """The options every command takes, before or after its name. ``late``: the copies
    a sub-command carries, hidden from its help, which only override what was given
    (so ``secureml get x --json`` is ``secureml --json get x``)."""

    def option(*decls: str, **kwargs: Any) -> click.Option:
        if late:
            flag, many = kwargs.get("is_flag", False), kwargs.get("multiple", False)
            kwargs.update(
                default=False if flag else () if many else None,
                show_default=False,
                hidden=True,
                expose_value=False,
                callback=_late_global,
            )
        return click.Option(list(decls), **kwargs)

    return [
        option(
            "--vault-url",
            metavar="URL",
            help="Vault/OpenBao address (else SECUREML_VAULT_URL, BAO_ADDR, VAULT_ADDR). "
            "The token comes from SECUREML_VAULT_TOKEN, BAO_TOKEN or VAULT_TOKEN.",
        ),
        option(
            "--vault-path", default="secureml", show_default=True, help="Folder under the mount."
        ),
        option("--mount", default="secret", show_default=True, help="The KV mount."),
        option(
            "--namespace",
            metavar="NS",
            help="Vault namespace (else SECUREML_VAULT_NAMESPACE, BAO_NAMESPACE, VAULT_NAMESPACE).",
        ),
        option(
            "--ca-cert",
            metavar="PATH",
            help="CA bundle or directory for Vault's TLS (else SECUREML_VAULT_CACERT, "
            "VAULT_CACERT...).",
        ),
        option(
            "--timeout",
            type=_Duration("SECONDS", _timeout_seconds, 0.1),
            help="Per attempt: 5, 5s, 500ms (else 5s).",
        ),
        option("--retries", type=click.IntRange(min=0), help="Extra attempts (else 2)."),
        option("--no-env-fallback", is_flag=True, help="Do not read SECUREML_<NAME> variables."),
        option(
            "--allow-dev-defaults",
            is_flag=True,
            help="Serve INSECURE deterministic defaults as a last resort (development only).",
        ),
        option(
            "--declared-key",
            "declared_keys",
            multiple=True,
            metavar="NAME",
            help="Use NAME as a key although `keys generate` did not make it (an environment "
            "or KV v1 key; repeatable).",
        ),
        option(
            "--declared-transit-key",
            "declared_transit_keys",
            multiple=True,
            metavar="NAME",
            help="Open format-1 messages of Transit key NAME (older data keys; repeatable).",
        ),
        option("--json", "as_json", is_flag=True, help="Print data as JSON."),
        option("--debug", is_flag=True, help="Show tracebacks."),
    ]


def _late_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the sub-command: it overrides the group's value."""
    from click.core import ParameterSource

    options = ctx.find_object(Options)
    if (
        options is None
        or ctx.get_parameter_source(param.name or "") is not ParameterSource.COMMANDLINE
    ):
        return
    name = param.name
    if name == "no_env_fallback":
        options.env_fallback = False
    elif name == "allow_dev_defaults":
        options.dev_defaults = True
    elif name == "as_json":
        options.json = True
    elif name in ("declared_keys", "declared_transit_keys"):
        setattr(options, name, (*getattr(options, name), *value))
    else:
        setattr(options, name or "", value)


def _with_late_globals(command: click.Command) -> None:
    """Give ``command`` the global options, but those it has a meaning of its own for."""
    own = {opt for param in command.params for opt in getattr(param, "opts", ())}
    for option in _global_options(late=True):
        if not own.intersection(option.opts):
            command.params.append(option)
    note = "The global options (secureml --help) work here too."
    command.epilog = f"{command.epilog}\n\n{note}" if command.epilog else note


def _transit_kv_mount(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(
            "--mount is the KV mount; the Transit engine's is --transit-mount", ctx=ctx
        )


class _Command(click.Command):
    """A sub-command: takes the global options after its name as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _with_late_globals(self)


_Commands.command_class = _Command


_EXIT_CODES = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 denied (permission or "
    "credentials), 5 Vault unavailable or sealed, 6 invalid ciphertext, 130 interrupted."
)


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error as one line: what is wrong, and where the help is."""
    text = _for_terminal(" ".join(exc.format_message().split()))
    if text.startswith("Got unexpected extra argument"):
        # Not echoed: `secureml set NAME hunter2` would print the password.
        text = "unexpected extra arguments (not shown: one may be a secret; values go on stdin)"
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    return text


def _out(options: Options, data: Any, text: str | None = None) -> None:
    """Data as JSON with --json (times in RFC 3339), else as text."""
    if options.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=_json_value))
    else:
        click.echo(text if text is not None else data)


def _json_value(value: Any) -> Any:
    from datetime import datetime, timezone

    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None).isoformat() + "Z"
    return str(value)


def _for_terminal(text: str) -> str:
    """``text`` with every control or format character (but newline and tab) escaped."""
    import unicodedata

    return "".join(
        c if c in "\n\t" or not unicodedata.category(c).startswith("C") else _escaped(c)
        for c in text
    )


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # Escaped: a message may quote what a secret's writer chose (a field's name).
    click.echo(_for_terminal(f"secureml: error: {message}"), err=True)
    sys.exit(code)


@click.group(
    cls=_Root,
    context_settings={"help_option_names": ["-h", "--help"]},
    params=_global_options(),
    epilog=_EXIT_CODES,
)
@click.version_option(package_name="secureml", prog_name="secureml")
@click.pass_context
def cli(
    ctx: click.Context,
    vault_url: str | None,
    vault_path: str,
    mount: str,
    namespace: str | None,
    ca_cert: str | None,
    timeout: float | None,
    retries: int | None,
    no_env_fallback: bool,
    allow_dev_defaults: bool,
    declared_keys: tuple[str, ...],
    declared_transit_keys: tuple[str, ...],
    as_json: bool,
    debug: bool,
) -> None:
    """Secrets and encryption keys for ML pipelines, from Vault/OpenBao."""
    ctx.obj = Options(
        vault_url=vault_url,
        vault_path=vault_path,
        mount=mount,
        namespace=namespace,
        ca_cert=ca_cert,
        timeout=timeout,
        retries=retries,
        env_fallback=not no_env_fallback,
        dev_defaults=allow_dev_defaults,
        json=as_json,
        debug=debug,
        declared_keys=declared_keys,
        declared_transit_keys=declared_transit_keys,
    )


# -- status and secrets ----------------------------------------------------------------


@cli.command()
@pass_options
def status(options: Options) -> None:
    """Where secrets come from, and how Vault is doing."""
    from dataclasses import asdict

    found = options.manager().status()
    report = asdict(found)
    if options.json:
        _out(options, report)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for field, value in report.items():
            shown = _duration(value) if field == "token_ttl" and value is not None else value
            table.add_row(field, "-" if shown is None else str(shown))
        Console().print(table)
    if found.vault_url is None:
        _fail(
            "no Vault address is configured: set BAO_ADDR (or VAULT_ADDR, "
            "SECUREML_VAULT_URL) or pass --vault-url"
        )
    # Scripts can test health: 5 down or sealed, 4 credentials refused, 1 other trouble.
    if found.vault_url is not None and (not found.reachable or found.sealed):
        sys.exit(EXIT_UNAVAILABLE)
    if found.error is not None:
        denied = any(w in found.error for w in ("denied", "rejected", "refused to log in"))
        sys.exit(EXIT_DENIED if denied else EXIT_ERROR)


def _provenance(options: Options, asked: int | None) -> dict[str, Any]:
    """Where the value just read came from, and (from Vault's KV v2) its version and
    when it was written: what `get --json` adds to the value."""
    from .key_management.errors import KeyManagementError

    reads = [e for e in options.events if e.operation == "get_secret" and e.outcome != "error"]
    source = reads[-1].source if reads else None
    found: dict[str, Any] = {"source": source, "version": None, "created_time": None}
    if source is None or not source.startswith("vault:"):
        return found
    try:
        versions = options.manager().key_versions(reads[-1].name)
    except KeyManagementError:  # KV v1, or no right to read metadata: only the source
        return found
    chosen = next((v for v in versions if (v.version == asked if asked else v.is_current)), None)
    if chosen is not None:
        found["version"], found["created_time"] = chosen.version, chosen.created_at
    return found


def _duration(seconds: float) -> str:
    """``2764799`` as ``31d 23h``: the two largest units, as ``vault token lookup`` does."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


def _shown(value: Any) -> tuple[str, str]:
    """A secret as one line of text, and how it is encoded."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii"), "base64"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True), "fields"
    if not isinstance(value, str):  # a field's number, true, null or list, as JSON says it
        return json.dumps(value), "json"
    return value, "text"


@cli.command()
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), help="A version (KV v2).")
@click.option("--field", help="Print only this field of a secret with several.")
@pass_options
def get(options: Options, name: str, version: int | None, field: str | None) -> None:
    """Print secret NAME (bytes as base64, several fields as JSON)."""
    value = options.manager().get_secret(name, version=version)
    if field is not None:
        if not isinstance(value, dict) and field == "value":
            pass  # a single value is the field "value", as `bao kv get -field=value` has it
        elif not isinstance(value, dict):
            _fail(f"{name} has no fields (it holds one value); drop --field")
        elif field not in value:
            known = ", ".join(sorted(value)) or "none"
            _fail(f"{name} has no field {field!r} (its fields: {known})", EXIT_NOT_FOUND)
        else:
            value = value[field]
    text, encoding = _shown(value)
    if options.json:
        shown: Any = value if isinstance(value, dict) else text
        _out(
            options,
            {"name": name, "value": shown, "encoding": encoding, **_provenance(options, version)},
        )
    else:
        # As stored into pipes and files (click.echo would strip ANSI codes); escaped on
        # a terminal, where a stored escape sequence could act (OSC 52 writes the
        # clipboard, others retitle or rewrite the screen).
        sys.stdout.write((_for_terminal(text) if sys.stdout.isatty() else text) + "\n")


@cli.command(name="set")
@click.argument("name")
@click.argument("fields", nargs=-1, metavar="[FIELD=VALUE|FIELD=@FILE|FIELD=-]...")
@click.option("--value", help="The value (visible to other users in the process list!).")
@click.option(
    "--file", "path", type=click.Path(exists=True, dir_okay=False), help="Read the value here."
)
@click.option("--binary", is_flag=True, help="Store the input as bytes, not text.")
@click.option("--allow-empty", is_flag=True, help="Allow storing an empty value.")
@pass_options
def set_(
    options: Options,
    name: str,
    fields: tuple[str, ...],
    value: str | None,
    path: str | None,
    binary: bool,
    allow_empty: bool,
) -> None:
    """Store secret NAME: from stdin (one trailing newline dropped), a hidden prompt,
    --file (as is) or --value; or several fields, as `vault kv put` takes them
    (FIELD=@FILE reads a file, FIELD=- stdin)."""
    if value is not None and path is not None:
        raise click.UsageError("pass --value or --file, not both")
    data: str | bytes | dict[str, str]
    if fields:
        if value is not None or path is not None or binary:
            raise click.UsageError(
                "FIELD=VALUE arguments go alone: not with --value, --file or --binary"
            )
        data = _fields_given(fields, allow_empty=allow_empty)
    elif value is not None:
        click.echo(
            "secureml: warning: --value is visible to other users (ps, shell history); "
            "prefer stdin or the prompt",
            err=True,
        )
        data = value.encode() if binary else value
    elif path is not None:
        with open(path, "rb") as source:
            raw = source.read()
        data = raw if binary else _utf8(raw)
    elif sys.stdin.isatty():
        data = click.prompt(f"Value for {name}", hide_input=True, confirmation_prompt=True)
    else:
        raw = sys.stdin.buffer.read()
        data = raw if binary else _utf8(raw).removesuffix("\n")
    if not data and not allow_empty:
        raise click.UsageError(
            f"refusing to store an empty value as {name} (an unset variable?); pass "
            "--allow-empty if that is what you mean"
        )
    options.manager().set_secret(name, data)
    _out(options, {"name": name, "stored": True}, f"stored {name}")


def _field_text(raw: bytes, field: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"field {field!r} is not UTF-8 text; fields hold text (store bytes as a single "
            "value, with --binary)"
        ) from None


def _fields_given(pairs: tuple[str, ...], *, allow_empty: bool) -> dict[str, str]:
    """``FIELD=VALUE`` arguments as fields; ``@FILE`` and ``-`` (stdin) as vault takes
    them. A value on the command line is visible to other users: said once."""
    fields: dict[str, str] = {}
    inline = stdin_taken = False
    for pair in pairs:
        field, sep, given = pair.partition("=")
        if not sep or not field:
            # Never echoed: a bare argument may be the secret itself.
            raise click.UsageError(
                "arguments after NAME must be FIELD=VALUE; give a single value on stdin"
            )
        if field in fields:
            raise click.UsageError(f"field {field!r} is given twice")
        if given == "-" or given in ("@-", "@/dev/stdin"):
            if stdin_taken:
                raise click.UsageError("only one field can be read from stdin (FIELD=-)")
            stdin_taken = True
            fields[field] = _field_text(sys.stdin.buffer.read(), field).removesuffix("\n")
        elif given.startswith("@"):
            with open(given[1:], "rb") as source:
                fields[field] = _field_text(source.read(), field)
        else:
            fields[field] = given
            inline = True
        if not fields[field] and not allow_empty:
            raise click.UsageError(
                f"refusing to store field {field!r} empty (an unset variable?); pass "
                "--allow-empty if that is what you mean"
            )
    if inline:
        click.echo(
            "secureml: warning: FIELD=VALUE is visible to other users (ps, shell history); "
            "prefer FIELD=@FILE or FIELD=-",
            err=True,
        )
    return fields


@cli.command(name="list")
@click.argument("prefix", default="")
@pass_options
def list_(options: Options, prefix: str) -> None:
    """List secret names (under PREFIX)."""
    names = options.manager().list_secrets(prefix)
    if options.json:
        _out(options, names)
    elif names:
        click.echo("\n".join(names))


@cli.command()
@click.argument("name")
@click.option("--destroy", is_flag=True, help="Destroy for good (default: soft delete).")
@click.option("--version", "versions", type=click.IntRange(min=1), multiple=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_options
def delete(
    options: Options, name: str, destroy: bool, versions: tuple[int, ...], yes: bool
) -> None:
    """Delete secret NAME (soft, undoable) or its --version(s); --destroy for good."""
    what = f"versions {', '.join(map(str, versions))} of {name}" if versions else name
    verb = "destroy (for good)" if destroy else "delete"
    if not yes and not sys.stdin.isatty():
        raise click.UsageError(f"refusing to {verb} {what} without --yes (no terminal to ask)")
    _must_exist(options, name, versions)
    if not yes:
        click.confirm(f"{verb.capitalize()} {what}?", abort=True)
    options.manager().delete_secret(name, destroy=destroy, versions=list(versions) or None)
    _out(options, {"name": name, "deleted": True, "destroyed": destroy}, f"{verb}: {what}")


def _must_exist(options: Options, name: str, versions: tuple[int, ...]) -> None:
    """Fail with exit 3 unless ``name`` (and each of ``versions``) is in Vault: a delete
    of nothing is a typo, not a success. (KV v1 keeps no versions to ask about.)"""
    from .key_management.errors import (
        PermissionDeniedError,
        SecretNotFoundError,
        UnsupportedOperationError,
    )

    try:
        kept = {v.version for v in options.manager().key_versions(name)}
    except (UnsupportedOperationError, PermissionDeniedError):
        return  # KV v1, or a policy that may delete but not read metadata: just delete
    except SecretNotFoundError:
        _fail(f"{name} is not in Vault: nothing to delete", EXIT_NOT_FOUND)
    missing = [str(v) for v in versions if v not in kept]
    if missing:
        _fail(f"{name} has no version {', '.join(missing)}", EXIT_NOT_FOUND)


@cli.command()
@click.argument("name")
@pass_options
def explain(options: Options, name: str) -> None:
    """Where secret NAME comes from: every source in lookup order, which one wins, what
    it shadows, the cache, and a keyed fingerprint (never the value). Exit 3 if no
    source would serve it."""
    report = options.manager().explain(name)
    if options.json:
        _out(options, report.as_dict())
    else:
        click.echo(_for_terminal(_explained(report)))
    if report.served_from is None:
        sys.exit(EXIT_NOT_FOUND)


def _explained(report: Any) -> str:
    """An :class:`Explanation` as text for a terminal."""
    served = report.served_from or "nothing (a read would fail)"
    scope = (
        "comparable where SECUREML_FINGERPRINT_KEY is the same"
        if report.fingerprint_scope == "shared"
        else "this process only; set SECUREML_FINGERPRINT_KEY to compare across machines"
    )
    lines = [f"{report.name}: served from {served}"]
    if report.fingerprint:
        lines.append(f"  fingerprint      {report.fingerprint} ({scope})")
    if report.key_check_value:
        lines.append(f"  key check value  {report.key_check_value}")
    cache = report.cache
    if cache.state == "none":
        lines.append("  cache            none")
    else:
        lines.append(
            f"  cache            {cache.state}, read {_duration(cache.age_seconds or 0)} ago, "
            f"{_duration(cache.seconds_left or 0)} left"
        )
    lines.append("  sources, in lookup order:")
    for number, source in enumerate(report.sources, 1):
        facts = [source.state.replace("-", " ")]
        if source.shadowed:
            facts.append("shadowed by the source above")
        if source.version is not None:
            facts.append(f"version {source.version}")
        if source.created_at is not None:
            written = source.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            facts.append(f"written {written} ({_duration(source.age_seconds or 0)} ago)")
        if source.kv_version is not None:
            facts.append(f"KV v{source.kv_version}")
        if source.fingerprint:
            facts.append(source.fingerprint)
        if source.detail:
            facts.append(source.detail)
        lines.append(f"  {number}. {source.kind:<12} {source.location}: {'; '.join(facts)}")
    return "\n".join(lines)


@cli.command(
    name="exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--env",
    "env_bindings",
    multiple=True,
    metavar="VAR=NAME",
    help="Put secret NAME in variable VAR (repeatable).",
)
@click.option(
    "--file",
    "file_bindings",
    multiple=True,
    metavar="PATH=NAME",
    help="Write secret NAME to file PATH in a private folder, $SECUREML_SECRETS_DIR (repeatable).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_options
def exec_(
    options: Options,
    env_bindings: tuple[str, ...],
    file_bindings: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with secrets in its environment or in private 0600 files, never on
    its command line; signals are passed on and its exit code is secureml's.

    \b
    secureml exec --env DB_PASSWORD=db/password -- python train.py
    secureml exec --file tls.key=tls/key -- sh -c 'serve --key "$SECUREML_SECRETS_DIR/tls.key"'
    """
    from . import _exec

    if command[0].startswith("-"):
        raise click.UsageError(
            f"no such option: {command[0]} (the command goes after --: "
            "secureml exec --env VAR=NAME -- COMMAND ...)"
        )
    try:
        envs = [_exec.parse_binding(b, option="--env") for b in env_bindings]
        files = [_exec.parse_binding(b, option="--file") for b in file_bindings]
        if not envs and not files:
            raise _exec.ExecError("give at least one --env VAR=NAME or --file PATH=NAME")
        manager = options.manager()
        code = _exec.run(command, envs, files, manager.get_secret, _say_held_notes)
    except _exec.ExecError as exc:
        _fail(str(exc), _exec.exit_code_of(exc))
    sys.exit(code)


@cli.command()
@click.argument("name")
@click.option("--version", "versions", type=click.IntRange(min=1), multiple=True)
@pass_options
def undelete(options: Options, name: str, versions: tuple[int, ...]) -> None:
    """Restore soft-deleted secret NAME (its latest version, or --version(s))."""
    from .key_management.errors import SecretNotFoundError

    manager = options.manager()
    try:
        kept = {v.version: v for v in manager.key_versions(name)}
    except SecretNotFoundError:
        _fail(f"{name} is not in Vault: nothing to undelete", EXIT_NOT_FOUND)
    wanted = list(versions) or [max(kept)]
    for number in wanted:
        found = kept.get(number)
        if found is None:
            _fail(f"{name} has no version {number}", EXIT_NOT_FOUND)
        if found.destroyed:
            _fail(f"version {number} of {name} was destroyed: it cannot come back", EXIT_NOT_FOUND)
    deleted = [n for n in wanted if kept[n].deleted]
    if deleted:
        manager.undelete_secret(name, versions=deleted)
    what = ", ".join(map(str, deleted)) or "none (nothing was deleted)"
    _out(
        options,
        {"name": name, "undeleted": deleted},
        f"undeleted: {name} version {what}" if deleted else f"{name}: nothing was deleted",
    )


# -- keys --------------------------------------------------------------------------------


@cli.group(cls=_Commands)
def keys() -> None:
    """Generate, rotate, inspect and derive encryption keys."""


def _labels(pairs: tuple[str, ...]) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        found[key] = value
    return found or None


@keys.command()
@click.argument("name")
@click.option(
    "--bytes", "key_bytes", default=32, show_default=True, type=click.IntRange(16, _MAX_BYTES)
)
@click.option("--overwrite", is_flag=True, help="Add a version to an existing key.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable).")
@pass_options
def generate(
    options: Options, name: str, key_bytes: int, overwrite: bool, label: tuple[str, ...]
) -> None:
    """Store a new random key NAME in Vault."""
    version = options.manager().generate_key(
        name, key_bytes, overwrite=overwrite, metadata=_labels(label)
    )
    _out(options, {"name": name, "version": version}, f"{name}: version {version}")


def parse_duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w``, ``1y`` or plain seconds, in seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise click.BadParameter(
            f"{text!r} is not a positive duration like 1y, 90d, 12h, 30m or 45s"
        )
    return float(match.group(1)) * _SECONDS[match.group(2)]


@keys.command()
@click.argument("name")
@click.option(
    "--older-than",
    type=_Duration("AGE", parse_duration, 0),
    help="Only if the current version is this old: 1y, 90d, 12h.",
)
@click.option("--force", is_flag=True, help="Rotate a secret that `keys generate` did not make.")
@pass_options
def rotate(options: Options, name: str, older_than: float | None, force: bool) -> None:
    """Rotate key NAME: a new version of fresh random bytes."""
    manager = options.manager()
    if older_than is None:
        version: int | None = manager.rotate_key(name, force=force)
    else:
        version = manager.rotate_if_older_than(name, older_than, force=force)
    text = (
        f"{name}: version {version}"
        if version is not None
        else f"{name}: not rotated (younger than {_duration(older_than or 0)})"
    )
    _out(options, {"name": name, "rotated": version is not None, "version": version}, text)


@keys.command()
@click.argument("name")
@pass_options
def versions(options: Options, name: str) -> None:
    """List the versions of key NAME."""
    from dataclasses import asdict

    manager = options.manager()
    found = [asdict(v) for v in manager.key_versions(name)]
    if options.json:
        _out(options, found)
        return
    labels = manager.labels(name)
    if labels:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        click.echo(_for_terminal(f"labels: {shown}"))
    for v in found:
        state = "destroyed" if v["destroyed"] else "deleted" if v["deleted"] else "live"
        current = "  (current)" if v["is_current"] else ""
        click.echo(f"{v['version']:>4}  {v['created_at']:%Y-%m-%d %H:%M:%S}Z  {state}{current}")


_ENCODINGS = click.Choice(["hex", "base64", "base64url"])


@keys.command(name="get")
@click.argument("name")
@click.option("--encoding", type=_ENCODINGS, default="hex", show_default=True)
@click.option("--version", type=click.IntRange(min=1))
@click.option(
    "--bytes",
    "key_bytes",
    type=click.IntRange(16, _MAX_BYTES),
    help="Its length (default: as stored).",
)
@pass_options
def key_get(
    options: Options, name: str, encoding: str, version: int | None, key_bytes: int | None
) -> None:
    """Print key NAME (you asked for it: it is secret)."""
    key = _stored_key(options, name, key_bytes, "--bytes", encoding, version)
    _out(options, {"name": name, "key": key, "encoding": encoding}, str(key))


@keys.command()
@click.argument("name")
@click.option("--purpose", required=True, help="What the derived key is for (HKDF info).")
@click.option(
    "--bytes", "key_bytes", default=32, show_default=True, type=click.IntRange(1, _MAX_BYTES)
)
@click.option("--encoding", type=_ENCODINGS, default="hex", show_default=True)
@click.option(
    "--base-bytes",
    type=click.IntRange(16, _MAX_BYTES),
    help="The base key's length (default: as stored).",
)
@click.option("--version", type=click.IntRange(min=1), help="A version of the base key.")
@pass_options
def derive(
    options: Options,
    name: str,
    purpose: str,
    key_bytes: int,
    encoding: str,
    base_bytes: int | None,
    version: int | None,
) -> None:
    """Print a key derived from key NAME for PURPOSE (HKDF-SHA256)."""
    from .key_management import encode_key

    manager = options.manager()
    base = _stored_key(options, name, base_bytes, "--base-bytes", "bytes", version)
    derived = encode_key(manager.derive_key(base, purpose, key_bytes), cast("Encoding", encoding))
    _out(options, {"name": name, "purpose": purpose, "key": derived}, str(derived))


def _stored_key(
    options: Options,
    name: str,
    length: int | None,
    option: str,
    encoding: str,
    version: int | None,
) -> Any:
    """Key ``name`` at ``length`` bytes, or (``None``) at the length it is stored at."""
    from .key_management.errors import KeyFormatError

    manager = options.manager()
    try:
        return manager.get_encryption_key(
            name, length or 32, cast("Encoding", encoding), version=version
        )
    except KeyFormatError as exc:
        stored = exc.stored_bytes
        if stored is None or not 16 <= stored <= 8160:
            raise
        if length is not None or not _is_key(options, name):
            # Asked for another length, or a secret that is not a key (a certificate
            # is not an HKDF base): say how to read it, do not guess.
            raise KeyFormatError(f"{exc}; pass {option} {stored}", stored_bytes=stored) from None
    return manager.get_encryption_key(name, stored, cast("Encoding", encoding), version=version)


def _is_key(options: Options, name: str) -> bool:
    """Whether ``name`` is a key `keys generate` made (its label) or one declared."""
    if name in options.declared_keys:
        return True
    try:
        return bool(options.manager()._core.key_mark(name))
    except Exception:  # cannot tell (no metadata access): not assumed
        return False


# -- data and files ------------------------------------------------------------------------


@contextmanager
def _progress(total: int | None) -> Iterator[Any]:
    """A rich progress bar on a terminal for large inputs; nothing otherwise."""
    if total is None or total < PROGRESS_FROM_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    # On stderr: stdout may be the ciphertext.
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=total)
        yield lambda done: bar.update(task, completed=done)


def _size(path: str) -> int | None:
    return None if path == "-" else os.path.getsize(path)


#: Names of the standard streams that mean what ``-`` means, by role.
_STDIN = frozenset({"/dev/stdin", "/proc/self/fd/0", "/dev/fd/0"})
_STDOUT = frozenset({"/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"})


def _stdio(src: str, dst: str) -> tuple[str, str]:
    """``-`` for a source that names stdin and a destination that names stdout."""
    return ("-" if src in _STDIN else src), ("-" if dst in _STDOUT else dst)


def _special(path: str) -> bool:
    """A destination that is not a regular file (a pipe, ``>(cmd)``, a terminal): written
    as a stream, never replaced by a file."""
    if path == "-":
        return False
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextmanager
def _streams(src: str, dst: str) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """``-`` is stdin or stdout; anything else a file (opened only for stream use)."""
    from .key_management import atomic_output

    reader = sys.stdin.buffer if src == "-" else open(src, "rb", buffering=0)  # noqa: SIM115
    try:
        if dst == "-":
            yield reader, sys.stdout.buffer
            sys.stdout.buffer.flush()
        elif _special(dst):  # a pipe or terminal: written as a stream, as stdout is
            with open(dst, "wb", buffering=0) as writer:
                yield reader, writer
        else:  # a file appears only once everything succeeded, as with the file methods
            with atomic_output(dst) as writer:
                yield reader, writer
    finally:
        if src != "-":
            reader.close()


def _destination(src: str, dst: str, *, force: bool, ciphertext: bool) -> None:
    """Refuse, before any work, a destination the user would not want written: binary
    ciphertext to a terminal (as gpg and age do), a folder, a file in a folder that is
    not there, or (without ``--force``) an existing file other than ``src`` itself
    (writing in place, ``reencrypt a.sml a.sml``, says so explicitly)."""
    if dst != "-" and os.path.isdir(dst):
        _fail(f"{dst} is a folder; give a file name for the output")
    if dst == "-" or _special(dst):
        if ciphertext and (sys.stdout.isatty() if dst == "-" else _is_terminal(dst)):
            _fail(
                "refusing to write binary ciphertext to a terminal; redirect it "
                "(> file.sml) or give a destination file"
            )
        return
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        _fail(f"the folder {folder} does not exist; create it first", EXIT_ERROR)
    if os.path.lexists(dst) and not force and not _same_file(src, dst):
        _fail(f"{dst} exists; pass --force to replace it")


def _is_terminal(path: str) -> bool:
    """Whether ``path`` is a terminal. Only a character device is opened to ask: opening
    (and closing) a FIFO would hand its reader an end of file before the data."""
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def _same_file(src: str, dst: str) -> bool:
    try:
        return src != "-" and os.path.samefile(src, dst)
    except OSError:
        return False


_force = click.option("--force", is_flag=True, help="Replace DST if it exists.")


class _Moved:
    """One file command's data, SRC to DST: by the file method when both are files (a
    destination that appears whole), else by the stream method; timed for its summary."""

    def __init__(self, options: Options, src: str, dst: str) -> None:
        self.options, self.src, self.dst = options, src, dst
        self.done = 0
        self.started = time.monotonic()

    def run(
        self, by_file: Callable[..., int], by_stream: Callable[..., int], *args: Any, **kwargs: Any
    ) -> None:
        src, dst = self.src, self.dst
        with _progress(_size(src)) as progress:
            if "-" not in (src, dst) and not _special(dst):
                self.done = by_file(src, dst, *args, progress=progress, **kwargs)
            else:
                with _streams(src, dst) as (reader, writer):
                    self.done = by_stream(reader, writer, *args, progress=progress, **kwargs)

    def summary(self, verb: str, *, always: bool = False) -> None:
        _summary(self.options, verb, self.src, self.dst, self.done, self.started, always=always)


def _summary(
    options: Options,
    verb: str,
    src: str,
    dst: str,
    done: int,
    started: float,
    *,
    always: bool = False,
) -> None:
    """One line on stderr once a file command is done (the progress bar, if any, is gone
    by then): what, how much, how fast, and under which key and version. On a terminal;
    for ``reencrypt`` always, since the new version is its news."""
    if not (always or sys.stderr.isatty()):
        return
    seconds = max(time.monotonic() - started, 1e-6)
    used = [
        e for e in options.events if e.operation in ("encrypt", "decrypt") and e.outcome == "ok"
    ]
    key = ""
    if used:
        last = used[-1]
        key = f", key {last.name}" + (f" version {last.version}" if last.version else "")
        if verb == "reencrypted" and len(used) > 1 and used[0].version:
            key += f" (was version {used[0].version})"
    where = f"{'stdin' if src == '-' else src} -> {'stdout' if dst == '-' else dst}"
    line = (
        f"secureml: {verb} {where}: {_bytes(done)} in {seconds:.1f} s "
        f"({_bytes(done / seconds)}/s){key}"
    )
    click.echo(_for_terminal(line), err=True)


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _aad(text: str | None) -> bytes:
    return b"" if text is None else text.encode("utf-8")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--key", "key_name", default="master_key", show_default=True, help="Managed key.")
@click.option("--aad", help="Associated data (needed again to decrypt).")
@click.option("--transit-key", help="Use a fresh data key from this Vault Transit key.")
@click.option(
    "--segment-size",
    type=_SegmentSize(),
    help="Plaintext per segment, 64KiB to 4MiB [default: 1MiB]; smaller for files read "
    "at random in small pieces.",
)
@_force
@pass_options
def encrypt(
    options: Options,
    src: str,
    dst: str,
    key_name: str,
    aad: str | None,
    transit_key: str | None,
    segment_size: int | None,
    force: bool,
) -> None:
    """Encrypt SRC to DST (- for stdin/stdout)."""
    src, dst = _stdio(src, dst)
    _destination(src, dst, force=force, ciphertext=True)
    manager = options.manager()
    moved = _Moved(options, src, dst)
    moved.run(
        manager.encrypt_file,
        manager.encrypt_stream,
        key_name,
        transit_key=transit_key,
        aad=_aad(aad),
        segment_size=segment_size,
    )
    moved.summary("encrypted")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--aad", help="The associated data given to encrypt.")
@_force
@pass_options
def decrypt(options: Options, src: str, dst: str, aad: str | None, force: bool) -> None:
    """Decrypt SRC to DST (- for stdin/stdout). A file DST appears only if all of SRC
    authenticates; on stdout, output stops at the first bad segment."""
    src, dst = _stdio(src, dst)
    _destination(src, dst, force=force, ciphertext=False)
    manager = options.manager()
    moved = _Moved(options, src, dst)
    moved.run(manager.decrypt_file, manager.decrypt_stream, aad=_aad(aad))
    moved.summary("decrypted")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--key", "key_name", help="Move to this key (default: the one SRC names).")
@click.option("--aad", help="The associated data given to encrypt.")
@click.option("--transit-key", help="Move to a data key from this Transit key.")
@_force
@pass_options
def reencrypt(
    options: Options,
    src: str,
    dst: str,
    key_name: str | None,
    aad: str | None,
    transit_key: str | None,
    force: bool,
) -> None:
    """Re-encrypt SRC to DST under the current key version (after a rotation); SRC as
    DST rewrites it in place."""
    src, dst = _stdio(src, dst)
    _destination(src, dst, force=force, ciphertext=True)
    manager = options.manager()
    moved = _Moved(options, src, dst)
    moved.run(
        manager.reencrypt_file,
        manager.reencrypt_stream,
        key_name,
        transit_key=transit_key,
        aad=_aad(aad),
    )
    moved.summary("reencrypted", always=True)


# -- transit -------------------------------------------------------------------------------


@cli.group(cls=_Commands)
@click.option(
    "--transit-mount", default="transit", show_default=True, help="The Transit engine's mount."
)
@click.pass_context
def transit(ctx: click.Context, transit_mount: str) -> None:
    """Vault Transit: encryption where the key never leaves Vault."""
    ctx.meta["transit_mount"] = transit_mount


def _late_transit_mount(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta["transit_mount"] = value  # meta is shared with the group's context


#: ``--transit-mount`` after a Transit command's name, as before it.
_transit_mount_after = click.option(
    "--transit-mount", hidden=True, expose_value=False, callback=_late_transit_mount
)


def _refuse_kv_mount(command: click.Command) -> None:
    """On a Transit group or command, ``--mount`` (the KV mount, which they never use) is
    the old spelling of ``--transit-mount``: refused, never silently another mount."""
    command.params = [p for p in command.params if "--mount" not in getattr(p, "opts", ())]
    command.params.append(
        click.Option(["--mount"], hidden=True, expose_value=False, callback=_transit_kv_mount)
    )


def _transit(options: Options) -> Any:
    from .key_management import TransitKeys

    mount = click.get_current_context().meta.get("transit_mount", "transit")
    return TransitKeys(options.manager(), mount=mount)


def _context(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")


def _stdin_text() -> str:
    return sys.stdin.read().strip()


@transit.command(name="encrypt")
@_transit_mount_after
@click.argument("name")
@click.option("--context", help="Derived keys: which one.")
@pass_options
def transit_encrypt(options: Options, name: str, context: str | None) -> None:
    """Encrypt stdin with Transit key NAME; print the ciphertext."""
    token = _transit(options).encrypt(name, sys.stdin.buffer.read(), context=_context(context))
    _out(options, {"name": name, "ciphertext": token}, token)


@transit.command(name="decrypt")
@_transit_mount_after
@click.argument("name")
@click.option("--context", help="Derived keys: which one.")
@pass_options
def transit_decrypt(options: Options, name: str, context: str | None) -> None:
    """Decrypt the ciphertext on stdin with Transit key NAME; write the plaintext."""
    plaintext = _transit(options).decrypt(name, _stdin_text(), context=_context(context))
    if options.json:
        _out(options, {"name": name, "plaintext_base64": base64.b64encode(plaintext).decode()})
        return
    sys.stdout.buffer.write(plaintext)
    sys.stdout.buffer.flush()


@transit.command(name="rotate")
@_transit_mount_after
@click.argument("name")
@pass_options
def transit_rotate(options: Options, name: str) -> None:
    """Rotate Transit key NAME; print its new version."""
    version = _transit(options).rotate(name)
    _out(options, {"name": name, "version": version}, f"{name}: version {version}")


@transit.command(name="rewrap")
@_transit_mount_after
@click.argument("name")
@click.option("--context", help="Derived keys: which one.")
@pass_options
def transit_rewrap(options: Options, name: str, context: str | None) -> None:
    """Re-encrypt the ciphertext on stdin with the latest version of NAME."""
    token = _transit(options).rewrap(name, _stdin_text(), context=_context(context))
    _out(options, {"name": name, "ciphertext": token}, token)


for _transit_command in (transit, *transit.commands.values()):
    _refuse_kv_mount(_transit_command)


# -- dev server ----------------------------------------------------------------------------


@cli.command(name="dev-server")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="127.0.0.1 only.")
@click.option("--seed", is_flag=True, help="Store the README's example secrets and keys.")
def dev_server(port: int | None, host: str, seed: bool) -> None:
    """Run a throw-away OpenBao dev server until Ctrl-C (needs secureml[server]).

    It is unsealed, in memory, with a root token: it only ever listens on 127.0.0.1 (on
    PORT, and PORT+1 for cluster traffic). KV v2 is mounted at secret/, Transit at
    transit/; --seed stores the README's example secrets and keys.
    """
    if host not in ("127.0.0.1", "localhost"):
        _fail(
            f"refusing to bind {host}: the dev server is unsealed, in memory, with a root "
            "token anyone could use; it only listens on loopback (127.0.0.1)"
        )
    if port is not None:
        _check_ports(port)
    import signal
    import time

    from ._devserver import DevServer

    def interrupt(*_: object) -> NoReturn:
        raise KeyboardInterrupt

    # Before starting, and explicitly: a shell starts background jobs with SIGINT
    # ignored, and a closed terminal sends SIGHUP. Every way out stops the server.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)
    server = DevServer(port=port)
    try:
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            _fail(f"could not start the dev server: {' '.join(str(exc).split())[:300]}", 1)
        _announce_and_set_up(server, seed=seed)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            click.echo("# stopped", err=True)


def _check_ports(port: int) -> None:
    for wanted in (port, port + 1):  # bao takes the next port for cluster traffic
        if not _port_free(wanted):
            _fail(
                f"port {wanted} on 127.0.0.1 is in use (the dev server needs {port} and "
                f"{port + 1}); pick another or omit --port",
                EXIT_ERROR,
            )


def _announce_and_set_up(server: Any, *, seed: bool) -> None:
    """The export lines for another shell, then Transit (and the seed) set up."""
    click.echo(f"# OpenBao dev server at {server.address} (pid {server.pid}); Ctrl-C stops it")
    for prefix in ("BAO", "VAULT"):  # bao reads BAO_*, secureml BAO_* before VAULT_*
        click.echo(f"export {prefix}_ADDR={server.address}")
        click.echo(f"export {prefix}_TOKEN={server.root_token}")
    click.echo(f"# cluster traffic on 127.0.0.1:{server.port + 1}")
    try:
        server.bao("secrets", "enable", "transit")
        click.echo("# KV v2 at secret/, Transit at transit/")
        if seed:
            click.echo(f"# seeded: {', '.join(_seed(server.address, server.root_token))}")
    except Exception as exc:  # a half-set-up server is no use: say why, stop it
        _fail(f"could not set up the dev server: {_message(exc)}", EXIT_ERROR)
    sys.stdout.flush()


#: What ``dev-server --seed`` stores: the names the README's examples use.
SEED_SECRETS = {"db/password": "dev-password", "api_key": "dev-api-key"}
SEED_KEYS = ("datasets/key", "master_key")
SEED_TRANSIT_KEYS = ("features",)


def _seed(address: str, token: str) -> list[str]:
    """Store the README's example secrets and keys (random keys; fixed dev values)."""
    from .key_management import KeyManager, TransitKeys

    km = KeyManager(vault_url=address, vault_token=token)
    for name, value in SEED_SECRETS.items():
        km.set_secret(name, value)
    for name in SEED_KEYS:
        km.generate_key(name)
    transit = TransitKeys(km)
    for name in SEED_TRANSIT_KEYS:
        transit.ensure_key(name)
    return [
        *SEED_SECRETS,
        *(f"key {k}" for k in SEED_KEYS),
        *(f"transit key {k}" for k in SEED_TRANSIT_KEYS),
    ]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _route_library_logs(*, debug: bool) -> None:
    """The library's log records as one-line ``secureml: warning: ...`` on stderr. With
    --debug, all of them as they come; else its warnings (an outage it fell back
    through, a name Vault lacks that a fallback served) held until the command ends,
    and said only if it succeeded: an error stays one line, and a value served from
    the environment while Vault is down never passes silently."""
    import logging

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with contextlib.suppress(Exception):
                line = f"secureml: {record.levelname.lower()}: {record.getMessage()}"
                if debug:
                    click.echo(line, err=True)
                else:
                    _HELD_NOTES.append(line)

    library = logging.getLogger("secureml")
    library.handlers = [OneLine()]
    library.setLevel(logging.DEBUG if debug else logging.WARNING)
    library.propagate = False


#: Library warnings held until the command's outcome is known (see _route_library_logs).
_HELD_NOTES: list[str] = []


def _say_held_notes() -> None:
    notes, _HELD_NOTES[:] = list(_HELD_NOTES), []
    for line in dict.fromkeys(notes):  # each once, in order
        click.echo(_for_terminal(line), err=True)


def _quiet_warnings(message: Any, category: Any, *_: Any, **__: Any) -> None:
    """A Python warning (a plain-http address, a dev default served) as one line, held
    with the library's notes: said once the command succeeded."""
    _HELD_NOTES.append(f"secureml: warning: {message}")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C, then exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _unwind_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into an exception, so clean-up runs before exit (the
    default action ends the process at once, leaving temporary files behind)."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise _Terminated(signum)

    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) in (signal.SIG_DFL, None):
            signal.signal(number, stop)


class _ClosedStdout:
    """Stands in for a closed standard output: any write is one clear error."""

    def write(self, _: object) -> int:
        raise OSError("standard output is closed; redirect it (e.g. > file or | cat)")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _no_core_dumps() -> None:
    """A crash must not write a core file holding tokens and cached secrets."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not on every platform
        pass


def main() -> None:
    """The ``secureml`` console script."""
    import warnings

    _no_core_dumps()
    _unwind_on_termination()
    if sys.stdout is None:  # started with stdout closed (>&-)
        sys.stdout = cast("Any", _ClosedStdout())
    # One line per warning on stderr, like errors: no source lines.
    warnings.showwarning = _quiet_warnings
    cli(prog_name="secureml")


if __name__ == "__main__":
    main()
