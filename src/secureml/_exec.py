"""``secureml exec``: run a command with secrets in its environment or in private files,
never on its command line (which every user of the machine can read in ``ps``).

What the command gets:

- ``--env VAR=NAME``: the variable ``VAR`` holds secret ``NAME`` (text; several fields
  as JSON; bytes refused: an environment cannot hold every byte, use ``--file``).
- ``--file PATH=NAME``: secret ``NAME`` as the file ``PATH`` (a relative name), mode 0600,
  in a private folder (mode 0700, in memory under ``/dev/shm`` where there is one), whose
  path the command finds in ``SECUREML_SECRETS_DIR``. The folder is removed when the
  command ends, however it ends, as long as secureml itself is not killed with SIGKILL.

The command runs as a child (not through a shell), in secureml's process group: signals
sent to secureml (``kill``, a supervisor's SIGTERM) are passed on, and its exit code is
secureml's (128 + N when signal N ended it). A Ctrl-C or Ctrl-\\ typed in the terminal
reaches the child directly, as it reaches every process of the foreground group, so it
is not passed on a second time. The peers: ``aws-vault exec``, ``op run``, ``sops
exec-env``, Vault Agent's process supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import FrameType
from typing import Any

__all__ = ["SECRETS_DIR_VARIABLE", "Binding", "ExecError", "exit_code_of", "parse_binding", "run"]

#: The variable that tells the command where its ``--file`` secrets are.
SECRETS_DIR_VARIABLE = "SECUREML_SECRETS_DIR"
#: Signals passed on to the command when secureml receives them.
FORWARDED = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGQUIT", "SIGCONT")
#: Those a terminal sends to its whole foreground group, the command included.
_FROM_TERMINAL = ("SIGINT", "SIGQUIT")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExecError(ValueError):
    """A binding or command that cannot be run (the message says which, and why)."""


@dataclass(frozen=True)
class Binding:
    """``target=NAME``: where secret ``name`` goes (a variable, or a relative file path)."""

    target: str
    name: str


def parse_binding(text: str, *, option: str) -> Binding:
    """``VAR=NAME`` or ``PATH=NAME`` as given to ``option``.

    Raises:
        ExecError: Not ``target=NAME``, a bad variable name, or a path that is absolute
            or climbs out of the private folder.
    """
    target, sep, name = text.partition("=")
    if not sep or not target or not name:
        raise ExecError(f"{option} takes TARGET=NAME, such as DB_PASSWORD=db/password")
    if option == "--env" and _VARIABLE.fullmatch(target) is None:
        raise ExecError(f"{option}: {target!r} is not a variable name (letters, digits, _)")
    if option == "--file":
        path = PurePosixPath(target)
        if path.is_absolute() or ".." in path.parts or target.endswith("/"):
            raise ExecError(
                f"{option}: {target!r} must be a relative file name inside the private folder"
            )
    return Binding(target, name)


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


@contextlib.contextmanager
def _private_folder() -> Iterator[str]:
    """A folder only this user can enter, in memory where possible, removed at the end."""
    shm = "/dev/shm"  # noqa: S108 - RAM-backed, so the secrets never reach a disk
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
    folder = tempfile.mkdtemp(prefix="secureml-exec-", dir=base)  # mode 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(folder: str, relative: str, data: bytes) -> None:
    path = os.path.join(folder, relative)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def run(
    command: Sequence[str],
    env_bindings: Sequence[Binding],
    file_bindings: Sequence[Binding],
    read: Callable[[str], Any],
    starting: Callable[[], None] = lambda: None,
) -> int:
    """Run ``command`` with the bound secrets (each read with ``read(name)``; then
    ``starting()``, once every secret is in hand); its exit code (128 + N if signal N
    ended it; 127 if it is not found, 126 if not runnable).

    Raises:
        ExecError: A secret that cannot go where it was bound, or two bindings of one
            target.
    """
    _no_duplicates(env_bindings, "--env")
    _no_duplicates(file_bindings, "--file")
    program = shutil.which(command[0])
    if program is None:
        raise _NotFoundError(command[0])
    environment = dict(os.environ)
    for binding in env_bindings:
        environment[binding.target] = _as_text(binding.name, read(binding.name))
    with _private_folder() as folder:
        if file_bindings:
            for binding in file_bindings:
                _write_private(folder, binding.target, _as_bytes(read(binding.name)))
            environment[SECRETS_DIR_VARIABLE] = folder
        starting()
        try:
            child = subprocess.Popen([program, *command[1:]], env=environment)  # noqa: S603
        except PermissionError:
            raise _NotRunnableError(command[0]) from None
        del environment  # the values live in the child now, not in this frame
        return _wait_forwarding(child)


def _no_duplicates(bindings: Sequence[Binding], option: str) -> None:
    seen: set[str] = set()
    for binding in bindings:
        if binding.target in seen:
            raise ExecError(f"{option} binds {binding.target} twice")
        seen.add(binding.target)


class _NotFoundError(ExecError):
    exit_code = 127

    def __init__(self, program: str) -> None:
        super().__init__(f"{program}: command not found")


class _NotRunnableError(ExecError):
    exit_code = 126

    def __init__(self, program: str) -> None:
        super().__init__(f"{program}: permission denied (not executable)")


def exit_code_of(exc: ExecError) -> int:
    """The exit code a shell gives for ``exc`` (127 not found, 126 not runnable, else 2)."""
    return int(getattr(exc, "exit_code", 2))


def _wait_forwarding(child: subprocess.Popen[bytes]) -> int:
    """Wait for ``child``, passing on the signals secureml receives meanwhile."""
    terminal_group = _in_terminal_foreground()

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous: dict[int, Any] = {}
    for name in FORWARDED:
        number = getattr(signal, name, None)
        if number is None:
            continue
        typed = name in _FROM_TERMINAL and terminal_group
        # Typed in the terminal, the child has its own copy: ignored here, not doubled.
        previous[number] = signal.signal(number, signal.SIG_IGN if typed else forward)
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
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
