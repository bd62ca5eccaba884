"""``secureml exec``: run a command with secrets in its environment or in private files,
never on its command line (which every user of the machine can read in ``ps``).

What the command gets:

- ``--env VAR=NAME``: the variable ``VAR`` holds secret ``NAME`` (text; several fields
  as JSON; bytes refused: an environment cannot hold every byte, use ``--file``).
  Variables that change how programs load or run (``LD_*``, ``PATH``, ``BASH_ENV``...)
  are refused: a secret there would be run, or printed by the loader.
- ``--file PATH=NAME``: secret ``NAME`` as the file ``PATH`` (a relative name), mode 0600,
  in a private folder (mode 0700, in memory under ``/dev/shm`` where there is one), whose
  path the command finds in ``SECUREML_SECRETS_DIR``. The folder is removed when the
  command ends, however it ends, as long as secureml itself is not killed with SIGKILL.
- secureml's own environment, but for the Vault credentials in it (a token, an AppRole
  secret id). The command still runs as the same user, so it can read what that user
  can, a ``~/.vault-token`` included: this keeps credentials out of its environment (and
  of whatever it passes its environment to), it is no sandbox.

The command runs as a child (not through a shell), in secureml's process group. From the
first secret read on, signals secureml receives are handled: before the command starts,
SIGTERM, SIGHUP, SIGINT and SIGQUIT stop secureml (the folder removed); from then on,
every signal in :data:`FORWARDED` is passed on, and its exit code is secureml's (128 + N
when signal N ended it). A Ctrl-C or Ctrl-\\ typed in the terminal reaches the child
directly, as it reaches every process of the foreground group, so it is not passed on a
second time. The peers: ``aws-vault exec``, ``op run``, ``sops exec-env``, Vault Agent's
process supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .key_management._credentials import SECRET_ID_VAR, TOKEN_VARS

__all__ = [
    "FORWARDED",
    "SECRETS_DIR_VARIABLE",
    "Binding",
    "ExecError",
    "exit_code_of",
    "parse_binding",
    "run",
]

#: The variable that tells the command where its ``--file`` secrets are.
SECRETS_DIR_VARIABLE = "SECUREML_SECRETS_DIR"
#: Signals passed on to the command when secureml receives them.
FORWARDED = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT")
#: Those that stop secureml when they come before the command runs.
_STOPPING = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT")
#: Those a terminal sends to its whole foreground group, the command included.
_FROM_TERMINAL = ("SIGINT", "SIGQUIT")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables a secret must never go into: the loader and shells act on them.
_REFUSED_VARIABLES = frozenset({"PATH", "BASH_ENV", "ENV", "IFS", "PS4", SECRETS_DIR_VARIABLE})
_REFUSED_PREFIXES = ("LD_", "DYLD_")
#: secureml's own Vault credentials, kept from the command.
_CREDENTIAL_VARIABLES = frozenset((*TOKEN_VARS, SECRET_ID_VAR))


class ExecError(ValueError):
    """A binding or command that cannot be run (the message says which, and why)."""

    exit_code = 2


class _NotFoundError(ExecError):
    exit_code = 127


class _NotRunnableError(ExecError):
    exit_code = 126


class _Stopped(BaseException):
    """A stopping signal came before the command started: unwind, clean up, exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_code_of(exc: ExecError) -> int:
    """The exit code a shell gives for ``exc`` (127 not found, 126 not runnable, else 2)."""
    return exc.exit_code


@dataclass(frozen=True)
class Binding:
    """``target=NAME``: where secret ``name`` goes (a variable, or a relative file path)."""

    target: str
    name: str


def parse_binding(text: str, *, option: str) -> Binding:
    """``VAR=NAME`` or ``PATH=NAME`` as given to ``option`` (a path comes back normalised).

    Raises:
        ExecError: Not ``target=NAME``, a variable that is no name or must not hold a
            secret, or a path that is absolute or climbs out of the private folder.
    """
    target, sep, name = text.partition("=")
    if not sep or not target or not name:
        raise ExecError(f"{option} takes TARGET=NAME, such as DB_PASSWORD=db/password")
    if option == "--env":
        if _VARIABLE.fullmatch(target) is None:
            raise ExecError(f"{option}: {target!r} is not a variable name (letters, digits, _)")
        if target in _REFUSED_VARIABLES or target.startswith(_REFUSED_PREFIXES):
            raise ExecError(
                f"{option}: {target} changes how programs load or run; a secret must not go "
                "there (use --file for what a program reads from a path)"
            )
        return Binding(target, name)
    normal = posixpath.normpath(target)
    if (
        target.startswith("/")
        or target.endswith("/")
        or normal in (".", "..")
        or normal.startswith("../")
        or "\0" in target
    ):
        raise ExecError(
            f"{option}: {target!r} must be a relative file name inside the private folder"
        )
    return Binding(normal, name)


def _as_text(name: str, value: Any) -> str:
    if isinstance(value, bytes):
        raise ExecError(
            f"{name} holds bytes, which an environment variable cannot carry; pass it with "
            "--file instead"
        )
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    text = str(value)
    if "\0" in text:
        raise ExecError(f"{name} contains a NUL character; pass it with --file instead")
    return text


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True).encode()
    return str(value).encode()


def _check_files(bindings: Sequence[Binding]) -> None:
    """Each file once, and none inside another's name (``a`` and ``a/b``)."""
    seen: set[str] = set()
    for binding in bindings:
        if binding.target in seen:
            raise ExecError(f"--file binds {binding.target} twice")
        seen.add(binding.target)
    for target in seen:
        parent = posixpath.dirname(target)
        while parent:
            if parent in seen:
                raise ExecError(f"--file {target} lies inside --file {parent}, a file")
            parent = posixpath.dirname(parent)


@contextlib.contextmanager
def _private_folder() -> Iterator[str]:
    """A folder only this user can enter, in memory where possible, removed at the end
    (said on stderr if it cannot be: the command may have locked a part of it)."""
    shm = "/dev/shm"  # noqa: S108 - RAM-backed, so the secrets never reach a disk
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
    folder = tempfile.mkdtemp(prefix="secureml-exec-", dir=base)  # mode 0700
    try:
        yield folder
    finally:
        _remove(folder)


def _remove(folder: str) -> None:
    def unlock_and_retry(function: Callable[[str], object], path: str, _: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)

    shutil.rmtree(folder, onerror=unlock_and_retry)
    if os.path.lexists(folder):
        sys.stderr.write(
            f"secureml: warning: could not remove {folder}, which holds secrets: remove it\n"
        )


def _write_private(folder: str, relative: str, data: bytes) -> None:
    path = os.path.join(folder, relative)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ExecError(f"--file {relative}: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _program(name: str) -> str:
    """The file to run for ``name``, found as a shell would (127 if none, 126 if it is
    no runnable file)."""
    if "/" in name:
        if not os.path.exists(name):
            raise _NotFoundError(f"{name}: no such file")
        found = name
    else:
        which = shutil.which(name)
        if which is None:
            raise _NotFoundError(f"{name}: command not found")
        found = which
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise _NotRunnableError(f"{name}: permission denied (not a runnable file)")
    return found


class _Signals:
    """secureml's handlers for the forwarded signals, from the first secret read to the
    last file removed: before the command runs a stopping signal unwinds (``_Stopped``);
    while it starts, signals wait; once it runs, they are passed on."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.starting = False
        self.waiting: list[int] = []
        self._previous: dict[int, Any] = {}
        self._typed = _in_terminal_foreground()

    def __enter__(self) -> _Signals:
        for name in FORWARDED:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *_: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        child = self.child
        if child is not None:
            if not (name in _FROM_TERMINAL and self._typed):  # else it has its own copy
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)
        elif self.starting:
            self.waiting.append(signum)  # passed on once the child exists
        elif name in _STOPPING:
            raise _Stopped(signum)

    def started(self, child: subprocess.Popen[bytes]) -> None:
        self.child, self.starting = child, False
        for signum in self.waiting:
            if not (signal.Signals(signum).name in _FROM_TERMINAL and self._typed):
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)
        self.waiting.clear()


def run(
    command: Sequence[str],
    env_bindings: Sequence[Binding],
    file_bindings: Sequence[Binding],
    read: Callable[[str], Any],
    starting: Callable[[], None] = lambda: None,
) -> int:
    """Run ``command`` with the bound secrets (each read with ``read(name)``; then
    ``starting()``, once every secret is in hand); its exit code (128 + N if signal N
    ended it or stopped secureml first; 127 if it is not found, 126 if not runnable).

    Raises:
        ExecError: A secret that cannot go where it was bound, or a bad binding.
    """
    seen: set[str] = set()
    for binding in env_bindings:
        if binding.target in seen:
            raise ExecError(f"--env binds {binding.target} twice")
        seen.add(binding.target)
    _check_files(file_bindings)
    program = _program(command[0])
    try:
        with _Signals() as signals, _private_folder() as folder:
            environment = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARIABLES}
            for binding in env_bindings:
                environment[binding.target] = _as_text(binding.name, read(binding.name))
            for binding in file_bindings:
                _write_private(folder, binding.target, _as_bytes(read(binding.name)))
            if file_bindings:
                environment[SECRETS_DIR_VARIABLE] = folder
            starting()
            signals.starting = True
            try:
                child = subprocess.Popen(  # noqa: S603 - the user's own command, no shell
                    list(command), executable=program, env=environment
                )
            except OSError as exc:
                signals.starting = False
                raise _NotRunnableError(
                    f"{command[0]}: {exc.strerror or type(exc).__name__}"
                ) from None
            del environment  # the values live in the child now, not in this frame
            signals.started(child)
            code = child.wait()
    except _Stopped as stop:
        return 128 + stop.signum
    return 128 - code if code < 0 else code


def _in_terminal_foreground() -> bool:
    """Whether secureml runs in its terminal's foreground process group (so the
    terminal's own signals reach the child as well)."""
    for stream in (sys.stdin, sys.stderr, sys.stdout):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False
