"""The raw baselines secureml is measured against, each on one kept-alive connection."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import hvac
import urllib3

MOUNT = "secret"
FOLDER = "secureml"


def cache_floor(value: object, ttl: float = 60.0) -> Callable[[], object]:
    """The least a TTL cache can do per hit: a dict lookup and a clock check."""
    entries = {"x": (value, time.monotonic() + ttl)}
    now = time.monotonic

    def floor() -> object:
        e = entries.get("x")
        return e[0] if e is not None and now() < e[1] else None

    return floor


def key_floor(stored: str, length: int = 32, ttl: float = 60.0) -> Callable[[], bytes]:
    """Cache floor for a key kept as Vault's base64 text: lookup, clock, decode, length."""
    entries = {"k": (stored, time.monotonic() + ttl)}
    now = time.monotonic
    b64decode = base64.b64decode

    def floor() -> bytes:
        e = entries.get("k")
        if e is None or now() >= e[1]:
            raise KeyError("k")
        key = b64decode(e[0])
        if len(key) != length:
            raise ValueError("wrong key length")
        return key

    return floor


def hvac_kv(address: str, token: str | None = None) -> hvac.api.secrets_engines.KvV2:
    """A KV v2 handle on its own hvac client (one requests.Session: keep-alive)."""
    return hvac.Client(url=address, token=token).secrets.kv.v2


def hvac_read(kv: hvac.api.secrets_engines.KvV2, name: str) -> Callable[[], object]:
    def read() -> object:
        r = kv.read_secret_version(
            path=f"{FOLDER}/{name}", mount_point=MOUNT, raise_on_deleted_version=True
        )
        return r["data"]["data"]["value"]

    return read


def hvac_key(kv: hvac.api.secrets_engines.KvV2, name: str, length: int = 32) -> Callable[[], bytes]:
    read = hvac_read(kv, name)

    def key() -> bytes:
        material = base64.b64decode(str(read()))
        if len(material) != length:
            raise ValueError("wrong key length")
        return material

    return key


def urllib3_read(address: str, token: str, name: str) -> Callable[[], object]:
    """GET through one urllib3.PoolManager (its pool keeps the connection open)."""
    pool = urllib3.PoolManager()
    url = f"{address}/v1/{MOUNT}/data/{FOLDER}/{name}"
    headers = {"X-Vault-Token": token}

    def read() -> object:
        r = pool.request("GET", url, headers=headers)
        if r.status != 200:
            raise RuntimeError(f"urllib3 GET: {r.status}")
        return json.loads(r.data)["data"]["data"]["value"]

    return read


def http_client_read(address: str, token: str, name: str) -> Callable[[], object]:
    """GET on one http.client.HTTPConnection (HTTP/1.1 keep-alive): the floor for I/O."""
    parts = urlsplit(address)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    path = f"/v1/{MOUNT}/data/{FOLDER}/{name}"
    headers = {"X-Vault-Token": token}

    def read() -> object:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"http.client GET: {r.status}")
        return json.loads(body)["data"]["data"]["value"]

    return read


def hvac_rotate(kv: hvac.api.secrets_engines.KvV2, name: str) -> Callable[[], int]:
    """A careful hand-written rotation: current version, its length, check-and-set write."""
    path = f"{FOLDER}/{name}"

    def rotate() -> int:
        current = kv.read_secret_metadata(path=path, mount_point=MOUNT)["data"]["current_version"]
        data = kv.read_secret_version(path=path, version=current, mount_point=MOUNT)
        length = len(base64.b64decode(data["data"]["data"]["value"]))
        fresh = base64.b64encode(os.urandom(length)).decode()
        written = kv.create_or_update_secret(
            path=path,
            secret={"value": fresh, "encoding": "base64"},
            cas=current,
            mount_point=MOUNT,
        )
        return int(written["data"]["version"])

    return rotate


def hvac_transit(address: str, token: str) -> hvac.api.secrets_engines.Transit:
    return hvac.Client(url=address, token=token).secrets.transit
