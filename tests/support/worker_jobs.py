"""What worker processes run in tests/integration/test_workers_processes.py.

Module-level functions and classes only: ``spawn`` and ``forkserver`` children (and a
DataLoader's workers) receive them pickled by reference and import this module, so
nothing here may depend on a test's closure. Every function takes the spec as an
argument: the spec (settings, credential by reference) is the only thing that crosses.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from typing import Any

from secureml.key_management import KeyManagerSpec

# -- PyTorch DataLoader ----------------------------------------------------------------


def _encrypted_samples() -> type:
    """Build :class:`EncryptedSamples` (a ``torch.utils.data.Dataset``) on first use:
    importing torch costs seconds, and the pool and subprocess workers, which import
    this module too, never need it."""
    from torch.utils.data import Dataset

    class EncryptedSamples(Dataset[tuple[int, int, bytes]]):
        """A map-style dataset of blobs encrypted in the parent; each worker decrypts
        with its own manager, ``spec.manager()`` (one login per worker process)."""

        def __init__(self, spec: KeyManagerSpec, blobs: list[bytes]) -> None:
            self.spec = spec
            self.blobs = blobs

        def __len__(self) -> int:
            return len(self.blobs)

        def __getitem__(self, index: int) -> tuple[int, int, bytes]:
            plaintext = self.spec.manager().decrypt(self.blobs[index])
            return index, os.getpid(), plaintext

    # Pickled by reference as tests.support.worker_jobs.EncryptedSamples.
    EncryptedSamples.__module__ = __name__
    EncryptedSamples.__qualname__ = "EncryptedSamples"
    return EncryptedSamples


def __getattr__(name: str) -> Any:
    # PEP 562: ``EncryptedSamples`` exists once asked for (by the test, or by pickle in
    # a spawned DataLoader worker looking the class up by name).
    if name == "EncryptedSamples":
        cls = globals()["EncryptedSamples"] = _encrypted_samples()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- multiprocessing -------------------------------------------------------------------


def read_secret(spec: KeyManagerSpec, name: str) -> tuple[int, str, Any]:
    """One pool task: ``(pid, name, value)`` read through this process's manager."""
    return os.getpid(), name, spec.manager().get_secret(name)


def read_without_credential(
    spec: KeyManagerSpec, name: str, variable: str, later: str
) -> dict[str, Any]:
    """In a child that lacks ``variable``: what ``spec.manager()`` raises, as text.

    Then the child sets ``variable`` from ``later`` (another variable the parent set)
    and asks again, in the same process: a failed build must not be remembered as this
    process's manager, so the second call must work.
    """
    outcome: dict[str, Any] = {"pid": os.getpid(), "had_variable": variable in os.environ}
    try:
        spec.manager().get_secret(name)
    except Exception as exc:
        outcome["error_type"] = type(exc).__name__
        outcome["message"] = str(exc)
        outcome["cause"] = None if exc.__cause__ is None else type(exc.__cause__).__name__
    else:
        outcome["error_type"] = None
    os.environ[variable] = os.environ[later]
    try:
        outcome["then"] = spec.manager().get_secret(name)
    except Exception as exc:
        outcome["then"] = f"{type(exc).__name__}: {exc}"
    return outcome


# -- a bare subprocess (python -c) ----------------------------------------------------


def subprocess_main() -> None:  # pragma: no cover - runs in `python -c` children
    """Read a pickled ``(spec, name)`` from stdin, build ``spec.manager()``, say
    ``ready``, wait for ``go`` on stdin, then read the secret and print one line:
    ``ok <pid> <seconds the read took> <value>`` or ``error <type>: <message>``.

    Building the manager does not log in (that happens at its first use) but does the
    slow imports; the parent holds every child at ``go`` until all are ready, so that
    their first logins are as simultaneous as the machine allows (the spec's
    ``login_jitter`` then spreads them).
    """
    spec, name = pickle.load(sys.stdin.buffer)  # noqa: S301 - the test's own pickle
    try:
        manager = spec.manager()  # built now (imports done); it logs in at first use
    except Exception as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        return
    print("ready", flush=True)
    if sys.stdin.buffer.readline().strip() != b"go":
        print("error no go", flush=True)
        return
    started = time.monotonic()
    try:
        value = manager.get_secret(name)
    except Exception as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        return
    elapsed = time.monotonic() - started
    print(f"ok {os.getpid()} {elapsed:.4f} {value}", flush=True)
