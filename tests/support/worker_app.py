"""A tiny WSGI app for gunicorn --preload (tests/integration/test_workers_processes.py).

The spec is built at import, from variables the test sets on gunicorn's environment
(``WORKER_APP_*``; the AppRole secret id itself is in the variable the spec names,
never in the spec). Under ``--preload`` the master imports this module, and the import
reads one secret through ``spec.manager()``: the master then holds a logged-in manager
that every forked worker inherits, and must replace with its own (the fork-reset path).

``GET /secret?name=N`` answers the value of secret ``N`` read through
``spec.manager()``, with the worker's pid in ``X-Worker-Pid``; ``GET /ready`` answers
``ready`` without touching Vault. A failure answers 500 with the exception's type only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from secureml.key_management import AuthSpec, KeyManagerSpec

SECRET_ID_VAR = "WORKER_APP_SECRET_ID"

spec = KeyManagerSpec(
    vault_url=(os.environ["WORKER_APP_VAULT_URL"],),
    auth=AuthSpec.approle(
        os.environ["WORKER_APP_ROLE_ID"],
        secret_id_env=SECRET_ID_VAR,
        mount=os.environ["WORKER_APP_ROLE_MOUNT"],
    ),
    vault_path=os.environ["WORKER_APP_VAULT_PATH"],
    login_jitter=0,
)

#: Read in the master at import (with --preload): its manager is built and logged in
#: before gunicorn forks the workers.
MASTER_PID = os.getpid()
MASTER_READ = spec.manager().get_secret(os.environ["WORKER_APP_WARMUP_SECRET"])

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    headers = [
        ("Content-Type", "text/plain"),
        ("X-Worker-Pid", str(os.getpid())),
        ("X-Master-Pid", str(MASTER_PID)),
    ]
    path = environ.get("PATH_INFO", "")
    if path == "/ready":
        start_response("200 OK", headers)
        return [b"ready"]
    if path != "/secret":
        start_response("404 Not Found", headers)
        return [b"not found"]
    names = parse_qs(environ.get("QUERY_STRING", "")).get("name", [])
    if len(names) != 1:
        start_response("400 Bad Request", headers)
        return [b"one name= please"]
    try:
        value = spec.manager().get_secret(names[0])
    except Exception as exc:
        start_response("500 Internal Server Error", headers)
        return [type(exc).__name__.encode()]
    if not isinstance(value, str):
        start_response("500 Internal Server Error", headers)
        return [f"not text: {type(value).__name__}".encode()]
    start_response("200 OK", headers)
    return [value.encode()]
