"""`make bench` (second part): secureml's encryption side by side with raw AES-GCM, a plain
file copy, and Tink's streaming AEAD, in one run (issue 6's targets).

    .venv/bin/python bench/encryption.py          # ~2 minutes on 2 cores

Needs the bench extra (tink). The key comes from SECUREML_MASTER_KEY, so no server is
involved: this measures the format and the I/O, not Vault.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import tink
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tink import streaming_aead

from secureml.key_management import KeyManager

MEMORY_MIB = 64
FILE_MIB = 512
ROUNDS = 5
CHUNK = 1 << 20


def median_seconds(
    contestants: dict[str, Callable[[], object]],
    rounds: int,
    prepare: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Each contestant once per round, in rotated order; the median of its rounds.
    ``prepare`` runs untimed before every call (files: start from the same state)."""
    names = list(contestants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if prepare is not None:
                prepare()
            start = time.perf_counter()
            contestants[name]()
            samples[name].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in samples.items()}


def fresh_start(path: Path) -> Callable[[], None]:
    """Remove the previous output and flush dirty pages, so no contestant pays for the
    writeback of the one before it (the disk here is the noisiest part of the run)."""

    def prepare() -> None:
        path.unlink(missing_ok=True)
        os.sync()

    return prepare


def copy_file(src: Path, dst: Path) -> None:
    """The I/O floor in Python: read 1 MiB into a buffer, write it, until the end."""
    buffer = memoryview(bytearray(CHUNK))
    with src.open("rb", buffering=0) as reader, dst.open("wb", buffering=0) as writer:
        while n := reader.readinto(buffer):
            writer.write(buffer[:n])


def tink_primitive() -> streaming_aead.StreamingAead:
    streaming_aead.register()
    template = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
    return tink.new_keyset_handle(template).primitive(streaming_aead.StreamingAead)


def copy_file_atomically(src: Path, dst: Path) -> None:
    """The same copy into a temporary file renamed over ``dst``: the all-or-nothing
    output ``encrypt_file``/``decrypt_file`` promise, and its cost on its own."""
    temporary = dst.with_name(dst.name + ".part")
    copy_file(src, temporary)
    os.replace(temporary, dst)


def tink_encrypt(primitive: streaming_aead.StreamingAead, src: Path, dst: Path) -> None:
    with (
        src.open("rb") as reader,
        dst.open("wb") as raw,
        primitive.new_encrypting_stream(raw, b"") as writer,
    ):
        shutil.copyfileobj(reader, writer, CHUNK)


def tink_decrypt(primitive: streaming_aead.StreamingAead, src: Path, dst: Path) -> None:
    with (
        src.open("rb") as raw,
        dst.open("wb") as writer,
        primitive.new_decrypting_stream(raw, b"") as reader,
    ):
        shutil.copyfileobj(reader, writer, CHUNK)


def row(  # noqa: PLR0917 - one table row
    name: str, ours: float, base: float, size_mib: int, baseline: str, target: float | None
) -> str:
    """A table row; speeds in GB/s, ratio = secureml speed / baseline speed."""
    ratio = base / ours
    gbs = size_mib / 1024
    goal = "" if target is None else f"≥ {target}"
    ok = "" if target is None else ("yes" if ratio >= target else "**NO**")
    return (
        f"| {name} | {gbs / ours:.2f} GB/s | {gbs / base:.2f} GB/s | {ratio:.2f} "
        f"| {goal} | {ok} | {baseline} |"
    )


def memory_rows(km: KeyManager) -> list[str]:
    data = os.urandom(MEMORY_MIB << 20)
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    one_shot = aead.encrypt(nonce, data, None)
    blob = km.encrypt(data)
    t = median_seconds(
        {
            "encrypt": lambda: km.encrypt(data),
            "raw encrypt": lambda: aead.encrypt(nonce, data, None),
            "decrypt": lambda: km.decrypt(blob),
            "raw decrypt": lambda: aead.decrypt(nonce, one_shot, None),
        },
        ROUNDS,
    )
    raw = "raw `cryptography` AESGCM one-shot, same bytes"
    return [
        row("encrypt, 64 MiB in memory", t["encrypt"], t["raw encrypt"], 64, raw, 1.0),
        row("decrypt, 64 MiB in memory", t["decrypt"], t["raw decrypt"], 64, raw, 1.0),
    ]


def main() -> int:
    os.environ["SECUREML_MASTER_KEY"] = "hex:" + os.urandom(32).hex()
    km = KeyManager()
    versions = ", ".join(f"{p} {version(p)}" for p in ("secureml", "cryptography", "tink"))
    print(
        f"python {platform.python_version()}, {versions}, {os.cpu_count()} cores; "
        f"medians of {ROUNDS} interleaved rounds\n"
    )
    rows = []

    rows.extend(memory_rows(km))

    primitive = tink_primitive()
    with tempfile.TemporaryDirectory(dir=Path.home()) as folder:
        work = Path(folder)
        src, out = work / "plain.bin", work / "out.bin"
        ours_enc, tink_enc = work / "ours.sml", work / "tink.bin"
        with src.open("wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(1 << 20))
        km.encrypt_file(src, ours_enc)
        tink_encrypt(primitive, src, tink_enc)
        t = median_seconds(
            {
                "encrypt_file": lambda: km.encrypt_file(src, out),
                "tink encrypt": lambda: tink_encrypt(primitive, src, out),
                "copy": lambda: copy_file(src, out),
                "atomic copy": lambda: copy_file_atomically(src, out),
                "decrypt_file": lambda: km.decrypt_file(ours_enc, out),
                "tink decrypt": lambda: tink_decrypt(primitive, tink_enc, out),
            },
            ROUNDS,
            prepare=fresh_start(out),
        )
    tink_name = "Tink streaming AEAD `AES256_GCM_HKDF_1MB`, same file"
    copy_name = "plain file copy, 1 MiB readinto/write (the I/O floor)"
    atomic = "the same copy into a temporary file renamed over the destination"
    for ours in ("encrypt_file", "decrypt_file"):
        peer = "tink encrypt" if ours == "encrypt_file" else "tink decrypt"
        rows.append(row(f"{ours}, {FILE_MIB} MiB", t[ours], t[peer], FILE_MIB, tink_name, 1.3))
        rows.append(row(f"{ours}, {FILE_MIB} MiB", t[ours], t["copy"], FILE_MIB, copy_name, 0.8))
        rows.append(
            row(f"{ours}, {FILE_MIB} MiB", t[ours], t["atomic copy"], FILE_MIB, atomic, None)
        )

    columns = ["operation", "secureml", "baseline", "speed ratio (secureml / baseline)"]
    print("| " + " | ".join([*columns, "target", "met", "baseline is"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | :---: | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
