"""A small asyncio web app on secureml's AsyncKeyManager (Starlette, FastAPI-style).

The manager is built once, at startup, from the environment: ``KeyManager()`` reads
``VAULT_ADDR`` and ``VAULT_TOKEN`` (or ``BAO_*``, ``SECUREML_VAULT_*``, AppRole ids...).
Every handler awaits the facade, so a slow Vault read never blocks the event loop, and a
cached secret is served without leaving it. Endpoints:

- ``GET /secrets/{name}``: facts about the secret ``demo/{name}`` (its type and length,
  never its value). Only names under ``demo/`` can be asked about.
- ``POST /encrypt``: the request body (raw bytes) encrypted with the app's managed key,
  answered as ``{"ciphertext": "<base64>"}``.
- ``POST /decrypt``: that JSON back in, ``{"plaintext": "<base64>"}`` out; a tampered or
  foreign ciphertext is a 400 with a one-line error.
- ``GET /health``: ``status()`` of the manager (safe to show: no secret, no token).

Run it with any ASGI server, e.g.::

    VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... uvicorn asgi_app:app --app-dir examples

The ``VAULT_TOKEN`` needs read on ``secret/data/secureml/demo/*`` and, the first time,
write on the key (the app creates it if it is missing: in production, provision keys
ahead and give the app read only).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from secureml.key_management import (
    AsyncKeyManager,
    ConfigurationError,
    InvalidCiphertextError,
    KeyManagementError,
    KeyManager,
    SecretNotFoundError,
    VaultUnavailableError,
)

#: The managed key the app encrypts with (a Vault KV v2 secret of random bytes).
KEY_NAME = os.environ.get("ASGI_APP_KEY", "asgi-demo-key")
#: The only folder GET /secrets/... can look into.
DEMO_PREFIX = "demo/"
#: Associated data: ciphertexts made here open here only, not in another app that
#: happens to use the same key.
AAD = b"secureml examples/asgi_app"
#: The largest request body accepted, in bytes.
MAX_BODY = 1 << 20


def error(status: int, message: str) -> JSONResponse:
    """A one-line JSON error. Messages are fixed texts: never a value, never a token."""
    return JSONResponse({"error": message}, status_code=status)


def manager(request: Request) -> AsyncKeyManager:
    """The app's one AsyncKeyManager, made by :func:`lifespan`."""
    akm: AsyncKeyManager = request.state.akm
    return akm


async def body_of(request: Request) -> bytes | JSONResponse:
    body = await request.body()
    return body if len(body) <= MAX_BODY else error(413, "request body too large")


async def secret_facts(request: Request) -> JSONResponse:
    name = DEMO_PREFIX + request.path_params["name"]
    try:
        value = await manager(request).get_secret(name)
    except SecretNotFoundError:
        return error(404, "no such secret")
    except (TypeError, ValueError):  # an invalid name, e.g. with '..' or '//'
        return error(400, "invalid secret name")
    kind = "mapping" if isinstance(value, dict) else type(value).__name__
    return JSONResponse({"name": name, "type": kind, "length": len(value)})


async def encrypt(request: Request) -> JSONResponse:
    body = await body_of(request)
    if isinstance(body, JSONResponse):
        return body
    blob = await manager(request).encrypt(body, KEY_NAME, aad=AAD)
    return JSONResponse({"ciphertext": base64.b64encode(blob).decode("ascii")})


async def decrypt(request: Request) -> JSONResponse:
    body = await body_of(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        blob = base64.b64decode(json.loads(body)["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return error(400, 'expected JSON {"ciphertext": "<base64>"}')
    try:
        plaintext = await manager(request).decrypt(blob, aad=AAD)
    except InvalidCiphertextError:  # altered, truncated, not ours: deliberately opaque
        return error(400, "invalid ciphertext")
    return JSONResponse({"plaintext": base64.b64encode(plaintext).decode("ascii")})


async def health(request: Request) -> JSONResponse:
    status = await manager(request).status()  # never raises for a down Vault
    up = status.vault_url is None or (status.reachable and not status.sealed)
    ok = bool(up and status.error is None)  # error: e.g. the token was refused
    return JSONResponse(
        {
            "ok": ok,
            "vault_url": status.vault_url,
            "reachable": status.reachable,
            "sealed": status.sealed,
            "server_version": status.server_version,
            "kv_version": status.kv_version,
            "error": status.error,
        },
        status_code=200 if ok else 503,
    )


async def vault_down(request: Request, exc: Exception) -> JSONResponse:
    return error(503, "secrets backend unavailable")


async def key_management_failed(request: Request, exc: Exception) -> JSONResponse:
    return error(500, f"key management error ({type(exc).__name__})")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AsyncKeyManager]]:
    """Build the manager once (from the environment), make sure the key exists, and
    stop the facade's threads on shutdown."""
    akm = AsyncKeyManager(KeyManager())
    try:
        with contextlib.suppress(ConfigurationError):  # it exists already: keep it
            await akm.generate_key(KEY_NAME)
        yield {"akm": akm}  # handlers see it as request.state.akm
    finally:
        await akm.aclose()


app = Starlette(
    routes=[
        Route("/secrets/{name:path}", secret_facts, methods=["GET"]),
        Route("/encrypt", encrypt, methods=["POST"]),
        Route("/decrypt", decrypt, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ],
    exception_handlers={
        VaultUnavailableError: vault_down,
        KeyManagementError: key_management_failed,
    },
    lifespan=lifespan,
)
