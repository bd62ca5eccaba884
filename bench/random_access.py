"""`make bench` (random access): ``km.open_encrypted`` and ``secureml.safetensors`` side by
side with raw AES-GCM, ``decrypt_file`` and the plaintext peers, in one run (issue 17).

    .venv/bin/python bench/random_access.py          # 1 GiB files, ~1.5 minutes on 2 cores
    .venv/bin/python bench/random_access.py --quick  # 128 MiB files, ~20 s

1. 4 KiB reads at random offsets (seeded) of a 1 GiB encrypted file, with 1 MiB (the
   default), 256 KiB and 64 KiB segments: segments decrypted per read (target: at most
   1 on average for reads that do not straddle a segment boundary) and µs per read
   against the raw AES-GCM reader, what a hand-written reader of the format does per
   read: ``os.pread`` of the segment's ciphertext and one ``cryptography`` AESGCM
   decrypt of it, key bound once (target: at most 1.5x). Reads that straddle a
   boundary (they need two segments) are reported apart. The offsets cover the whole
   file, so the reader's few cached segments rarely hit: the hit rate is printed too.
   For context: the decrypt alone (no I/O: reading a segment from tmpfs costs a third
   to a half of decrypting it), the pread alone, and ``os.pread`` of 4 KiB of the
   plaintext file (the I/O floor).
2. Reading the whole file in order through ``open_encrypted`` (``readinto`` a reused
   1 MiB buffer, and 64 KiB reads as a typical consumer makes) against
   ``km.decrypt_file`` to a file beside it (target: at least 0.8x its speed). For
   context: ``decrypt_stream`` to /dev/null (the same threaded pipeline without the
   output file, whose writing is much of ``decrypt_file``'s cost on tmpfs), and a plain
   ``readinto`` of the plaintext file (the I/O floor).
3. One 64 MiB tensor of a 1 GiB safetensors file (16 float32 tensors) through
   ``secureml.safetensors.safe_open``: bytes decrypted at open (the header and the last
   segment) and by ``get_tensor`` (target: at most the tensor plus two segments), and
   its time against ``safetensors``' own ``safe_open`` and ``load_file`` of the
   plaintext file and against decrypting the whole file, then loading the tensor.

The key comes from an environment variable (``SECUREML_MODELS_KEY``), so no server is
involved: this measures the format and the reader, not Vault. Files go to /dev/shm when
there is one (else a temporary folder), so the disk is not what is measured; at most
three files of the chosen size exist at once, and a smaller size is used (and said so)
when there is no room for them. Every contestant of a group runs once per round in a
rotated order; medians of the rounds are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from _timing import fmt_us, median_seconds
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secureml.key_management import KeyManager
from secureml.key_management import _envelope as envelope

KEY = "models/key"
FILE_MIB = 1024
QUICK_MIB = 128
MIN_MIB = 64
#: Files of the chosen size that exist at once (plaintext, ciphertext, a decrypted copy).
FILES_AT_ONCE = 3
SEGMENT_SIZES = (1 << 20, 256 << 10, 64 << 10)
READ = 4096
#: 4 KiB reads per round with 1 MiB segments; smaller segments get proportionally
#: more (they are cheaper), up to MAX_READS, so each size gets its share of straddlers.
READS = 300
MAX_READS = 2_000
RANDOM_ROUNDS = 7
SEQUENTIAL_ROUNDS = 5
TENSOR_ROUNDS = 5
TENSORS = 16
SEED = 17  # the number: the same offsets every run
CHUNK = 1 << 20
SMALL_CHUNK = 64 << 10
SEGMENT_TARGET = 1.0
READ_TARGET = 1.5
SEQUENTIAL_TARGET = 0.8


# -- files -------------------------------------------------------------------------------


SHM = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private folder in it


@contextmanager
def scratch_folder() -> Iterator[Path]:
    where = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=where, prefix="secureml-bench-") as folder:
        yield Path(folder)


def fitting_size(work: Path, wanted_mib: int) -> int:
    """``wanted_mib``, or the largest half of it that leaves room for the files."""
    free = shutil.disk_usage(work).free
    mib = wanted_mib
    while mib > MIN_MIB and free < FILES_AT_ONCE * (mib << 20) * 1.05:
        mib //= 2
    if free < FILES_AT_ONCE * (mib << 20):
        raise SystemExit(f"{free / 2**20:.0f} MiB free in {work}: not enough for this bench")
    if mib != wanted_mib:
        print(
            f"note: {free / 2**30:.2f} GiB free in {work}, less than {FILES_AT_ONCE} files of "
            f"{wanted_mib} MiB need: using {mib} MiB files instead\n"
        )
    return mib


def pseudo_random(size: int, seed: int) -> bytes:
    """``size`` bytes of AES-CTR keystream: random enough for a cipher, and much faster
    to make than ``os.urandom`` (1 GiB of it takes seconds here)."""
    key = seed.to_bytes(32, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(size))


def write_plaintext(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        for i in range(0, mib, 64):
            f.write(pseudo_random(min(64, mib - i) << 20, SEED + i))


def label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


# -- 1. 4 KiB reads at random offsets ----------------------------------------------------


@dataclass
class Reads:
    """What the reader did over the rounds: per-round mean µs per read (by kind), and
    totals of reads, segments touched and segments decrypted (by kind)."""

    us: dict[str, list[float]] = field(default_factory=lambda: {"inside": [], "all": []})
    reads: dict[str, int] = field(default_factory=lambda: {"inside": 0, "all": 0})
    decrypted: dict[str, int] = field(default_factory=lambda: {"inside": 0, "all": 0})
    touched: int = 0


def reader_reads(reader: Any, offsets: list[int], segment: int, result: Reads) -> float:
    """4 KiB ``seek`` + ``read`` at each offset, each timed alone and sorted into reads
    that straddle a segment boundary or not; mean µs per read."""
    spent = {"inside": 0, "all": 0}
    count = {"inside": 0, "all": 0}
    for offset in offsets:
        before = reader.segments_decrypted
        start = time.perf_counter_ns()
        reader.seek(offset)
        reader.read(READ)
        took = time.perf_counter_ns() - start
        decrypted = reader.segments_decrypted - before
        straddles = offset % segment + READ > segment
        for kind in ("all",) if straddles else ("inside", "all"):
            spent[kind] += took
            count[kind] += 1
            result.decrypted[kind] += decrypted
            result.reads[kind] += 1
        result.touched += 2 if straddles else 1
    for kind, total in spent.items():
        if count[kind]:
            result.us[kind].append(total / count[kind] / 1000)
    return spent["all"] / count["all"] / 1000


def per_call_us(call: Callable[[int], object], offsets: list[int]) -> float:
    start = time.perf_counter_ns()
    for offset in offsets:
        call(offset)
    return (time.perf_counter_ns() - start) / len(offsets) / 1000


def random_reads(
    km: KeyManager, plain: Path, sealed: Path, segment: int
) -> tuple[Reads, dict[str, list[float]]]:
    """Time 4 KiB reads at random offsets through ``open_encrypted`` against a raw
    AES-GCM decrypt of one segment, ``os.pread`` of the plaintext and of the sealed
    segment, and that pread with the segment's decrypt (a reader's floor), interleaved
    round by round; the reader and the preads get the same offsets."""
    size = plain.stat().st_size
    reads = min(MAX_READS, READS * ((1 << 20) // segment))
    rng = random.Random(SEED + segment)
    step = segment + envelope.TAG_BYTES
    with sealed.open("rb") as f:
        envelope.read_header(f)
        body_start = f.tell()
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    segment_ciphertext = aead.encrypt(nonce, pseudo_random(segment, SEED), None)
    plain_fd = os.open(plain, os.O_RDONLY)
    sealed_fd = os.open(sealed, os.O_RDONLY)
    reader: Any = km.open_encrypted(sealed)
    # The message's own cipher (private: the floor decrypts the real segments).
    cipher: Any = km.open_encrypted(sealed)
    segment_cipher, last = cipher._cipher_or_none, cipher._count - 1
    result = Reads()
    try:
        # Bytes the reader returns are checked, untimed, against the plaintext.
        for offset in rng.sample(range(size - READ + 1), 50):
            reader.seek(offset)
            if reader.read(READ) != os.pread(plain_fd, READ, offset):
                raise RuntimeError("the reader and the plaintext disagree")

        def floor(offset: int) -> bytes:
            i = offset // segment
            return segment_cipher.open(
                i, os.pread(sealed_fd, step, body_start + i * step), i == last
            )

        contestants: dict[str, Callable[[list[int]], float]] = {
            "reader": lambda offsets: reader_reads(reader, offsets, segment, result),
            "raw": lambda offsets: per_call_us(
                lambda _: aead.decrypt(nonce, segment_ciphertext, None), offsets
            ),
            "pread plain": lambda offsets: per_call_us(
                lambda o: os.pread(plain_fd, READ, o), offsets
            ),
            "pread sealed": lambda offsets: per_call_us(
                lambda o: os.pread(sealed_fd, step, body_start + o // segment * step), offsets
            ),
            "floor": lambda offsets: per_call_us(floor, offsets),
        }
        warm_up = [rng.randrange(size - READ + 1) for _ in range(max(10, reads // 10))]
        for name, run in contestants.items():
            if name != "reader":  # its warm-up was the check above
                run(warm_up)
        samples: dict[str, list[float]] = {n: [] for n in contestants}
        names = list(contestants)
        for r in range(RANDOM_ROUNDS):
            offsets = [rng.randrange(size - READ + 1) for _ in range(reads)]
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(contestants[name](offsets))
    finally:
        reader.close()
        cipher.close()
        os.close(plain_fd)
        os.close(sealed_fd)
    return result, samples


def random_read_tables(km: KeyManager, plain: Path, work: Path, mib: int) -> Path:
    """Section 1; returns the file with default-size segments (kept for section 2)."""
    count_rows: list[str] = []
    time_rows: list[str] = []
    kept = work / "default.sml"
    for segment in SEGMENT_SIZES:
        sealed = work / f"seg-{segment}.sml"
        km.encrypt_file(plain, sealed, KEY, segment_size=segment)
        result, samples = random_reads(km, plain, sealed, segment)
        t = {n: statistics.median(v) for n, v in samples.items()}
        if segment == 1 << 20:
            sealed.replace(kept)
        else:
            sealed.unlink()
        name = label(segment)
        inside = result.decrypted["inside"] / result.reads["inside"]
        every = result.decrypted["all"] / result.reads["all"]
        straddling = 1 - result.reads["inside"] / result.reads["all"]
        hits = 1 - result.decrypted["all"] / result.touched
        count_rows.append(
            f"| {name} | {result.reads['all']:,} | {straddling:.1%} | {inside:.3f} "
            f"| ≤ {SEGMENT_TARGET:g} | {met(inside <= SEGMENT_TARGET)} | {every:.3f} | {hits:.2%} |"
        )
        for kind, what in (("inside", "not straddling"), ("all", "all reads")):
            us = statistics.median(result.us[kind])
            # The median of the per-round ratios: both halves of one saw the same load.
            ratio = statistics.median(
                a / b for a, b in zip(result.us[kind], samples["floor"], strict=True)
            )
            alone = statistics.median(
                a / b for a, b in zip(result.us[kind], samples["raw"], strict=True)
            )
            time_rows.append(
                f"| {name} segments, {what} | {fmt_us(us)} | {fmt_us(t['floor'])} "
                f"| {ratio:.2f} | ≤ {READ_TARGET:g} | {met(ratio <= READ_TARGET)} "
                f"| {fmt_us(t['raw'])} ({alone:.2f}x) | {fmt_us(t['pread sealed'])} "
                f"| {fmt_us(t['pread plain'])} |"
            )
    print(
        f"1. 4 KiB reads at random offsets of a {mib} MiB encrypted file (`open_encrypted`, "
        f"seek + read); medians of {RANDOM_ROUNDS} interleaved rounds\n"
    )
    print(
        "| segments | reads | straddling a boundary | segments decrypted / read, not "
        "straddling | target | met | segments decrypted / read, all | cache hits |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: |")
    print("\n".join(count_rows))
    print()
    print(
        "| 4 KiB read at a random offset | secureml | raw AES-GCM reader: `os.pread` of the "
        "sealed segment + its decrypt | cost ratio (secureml / raw reader) | target | met "
        "| the decrypt alone (secureml / it) | `os.pread` of the sealed segment "
        "| `os.pread` 4 KiB of the plaintext |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: |")
    print("\n".join(time_rows))
    print(
        "\nraw AES-GCM reader = what a hand-written reader of the format does per read: "
        "`os.pread` of the segment's ciphertext and one `cryptography` AESGCM decrypt of it "
        "(key bound once); the decrypt alone = AESGCM.decrypt of a pre-made segment of the "
        "same size, no I/O; ratios are medians of the per-round ratios; cache hits = "
        "segments a read needed that were already decrypted / segments reads needed"
    )
    return kept


# -- 2. sequential read ------------------------------------------------------------------


def read_through(km: KeyManager, sealed: Path, chunk: int) -> int:
    buffer = memoryview(bytearray(chunk))
    total = 0
    with km.open_encrypted(sealed) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def read_plain(path: Path) -> int:
    buffer = memoryview(bytearray(CHUNK))
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return total


def decrypt_to_null(km: KeyManager, sealed: Path) -> int:
    """``decrypt_stream`` to /dev/null: ``decrypt_file``'s threaded pipeline without
    the cost of writing (and allocating) its output file."""
    with sealed.open("rb", buffering=0) as src, open(os.devnull, "wb", buffering=0) as dst:
        return km.decrypt_stream(src, dst)


def sequential_table(km: KeyManager, plain: Path, sealed: Path, work: Path, mib: int) -> None:
    out = work / "decrypted.bin"
    size = plain.stat().st_size
    if read_through(km, sealed, CHUNK) != size:
        raise RuntimeError("open_encrypted read the wrong number of bytes")
    t = median_seconds(
        {
            "1 MiB": lambda: read_through(km, sealed, CHUNK),
            "64 KiB": lambda: read_through(km, sealed, SMALL_CHUNK),
            "decrypt_file": lambda: km.decrypt_file(sealed, out),
            "decrypt_stream": lambda: decrypt_to_null(km, sealed),
            "plain": lambda: read_plain(plain),
        },
        SEQUENTIAL_ROUNDS,
        prepare=lambda: out.unlink(missing_ok=True),
        warm_up=True,
    )
    out.unlink(missing_ok=True)

    def mbs(seconds: float) -> str:
        return f"{size / seconds / 1e6:,.0f} MB/s"

    base = t["decrypt_file"]
    baseline = "`km.decrypt_file` to a file beside it"
    rows = []
    for chunk in ("1 MiB", "64 KiB"):
        ratio = base / t[chunk]
        rows.append(
            f"| `open_encrypted`, `readinto` a reused {chunk} buffer | {mbs(t[chunk])} "
            f"| {mbs(base)} | {ratio:.2f} | ≥ {SEQUENTIAL_TARGET:g} "
            f"| {met(ratio >= SEQUENTIAL_TARGET)} | {baseline} |"
        )
    stream = t["decrypt_stream"]
    rows.extend(
        f"| `open_encrypted`, `readinto` a reused {chunk} buffer | {mbs(t[chunk])} "
        f"| {mbs(stream)} | {stream / t[chunk]:.2f} |  |  | `km.decrypt_stream` to /dev/null "
        "(the same pipeline, no output file) |"
        for chunk in ("1 MiB", "64 KiB")
    )
    rows.append(
        f"| the I/O floor: `readinto` 1 MiB of the plaintext file | {mbs(t['plain'])} "
        f"| {mbs(base)} | {base / t['plain']:.2f} |  |  | {baseline} |"
    )
    print(
        f"2. reading a {mib} MiB encrypted file (1 MiB segments) from start to end; "
        f"medians of {SEQUENTIAL_ROUNDS} interleaved rounds\n"
    )
    print(
        "| sequential read | secureml | baseline | speed ratio (secureml / baseline) "
        "| target | met | baseline is |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: | --- |")
    print("\n".join(rows))


# -- 3. one tensor of a safetensors file -------------------------------------------------


def safetensors_tables(km: KeyManager, work: Path, mib: int) -> None:
    try:
        import numpy as np
        import safetensors.numpy
        from safetensors import safe_open as peer_open

        import secureml.safetensors as sst
    except ImportError as exc:
        print(f"3. safetensors: not built yet ({exc})")
        return
    elements = (mib << 20) // TENSORS // 4
    tensors = {
        f"layer.{i:02d}.weight": np.frombuffer(
            pseudo_random(elements * 4, SEED + 100 + i), dtype=np.float32
        ).reshape(-1, 1024)
        for i in range(TENSORS)
    }
    name = f"layer.{TENSORS // 2:02d}.weight"
    wanted = tensors[name].copy()
    plain, sealed, out = work / "model.safetensors", work / "model.sml", work / "whole.safetensors"
    safetensors.numpy.save_file(tensors, plain)
    sst.save_file(tensors, sealed, manager=km, key_name=KEY)
    del tensors
    with sealed.open("rb") as f:
        segment = envelope.read_header(f)[0].segment_bytes

    with sst.safe_open(sealed, "np", manager=km) as f:
        at_open = f.segments_decrypted
        keys = list(f.keys())
        got = f.get_tensor(name)
        by_get = f.segments_decrypted - at_open
    if len(keys) != TENSORS or got.view(np.uint8).tobytes() != wanted.view(np.uint8).tobytes():
        raise RuntimeError("secureml.safetensors returned other tensors than were saved")

    def ours() -> object:
        with sst.safe_open(sealed, "np", manager=km) as f:
            return f.get_tensor(name)

    def peer() -> object:
        with peer_open(plain, "np") as f:
            return f.get_tensor(name)

    def whole() -> object:
        km.decrypt_file(sealed, out)
        with peer_open(out, "np") as f:
            return f.get_tensor(name)

    t = median_seconds(
        {
            "ours": ours,
            "peer": peer,
            "load_file": lambda: safetensors.numpy.load_file(plain)[name],
            "whole": whole,
        },
        TENSOR_ROUNDS,
        prepare=lambda: out.unlink(missing_ok=True),
        warm_up=True,
    )
    out.unlink(missing_ok=True)

    tensor = wanted.nbytes
    limit = tensor + 2 * segment
    decrypted_by_get = by_get * segment
    print(
        f"3. one tensor ({name}, {label(tensor)}) of a {mib} MiB safetensors file of "
        f"{TENSORS} float32 tensors, {label(segment)} segments\n"
    )
    print(
        "| tensor bytes | decrypted at open (header + last segment) | decrypted by `get_tensor` "
        "| decrypted in all | target: `get_tensor` ≤ tensor + 2 segments | met |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | :---: |")
    print(
        f"| {tensor:,} | {at_open * segment:,} ({at_open} segments) "
        f"| {decrypted_by_get:,} ({by_get} segments) | {(at_open + by_get) * segment:,} "
        f"| ≤ {limit:,} | {met(decrypted_by_get <= limit)} |"
    )
    print("\n(bytes decrypted = segments decrypted times the segment size)\n")
    ms = {k: v * 1e3 for k, v in t.items()}
    rows = [
        ("`safetensors.safe_open` + `get_tensor` of the plaintext file (the peer)", "peer"),
        ("`safetensors.numpy.load_file` of the plaintext file (every tensor)", "load_file"),
        ("`km.decrypt_file` of the whole file, then `safe_open` + `get_tensor`", "whole"),
    ]
    print(
        f"| load one tensor, medians of {TENSOR_ROUNDS} interleaved rounds | secureml "
        "`safe_open` + `get_tensor` | baseline | cost ratio (secureml / baseline) | baseline is |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    for what, key in rows:
        print(
            f"| one {label(tensor)} tensor | {ms['ours']:,.1f} ms | {ms[key]:,.1f} ms "
            f"| {ms['ours'] / ms[key]:.2f} | {what} |"
        )


# -- main --------------------------------------------------------------------------------


def versions(*packages: str) -> str:
    found = []
    for p in packages:
        try:
            found.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            found.append(f"{p} (not installed)")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MIB} MiB files")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ["SECUREML_MODELS_KEY"] = "hex:" + os.urandom(32).hex()
    # A key in the environment seals only when declared as one (it could be a token).
    km = KeyManager(declared_keys=[KEY])
    with scratch_folder() as work:
        mib = fitting_size(work, QUICK_MIB if args.quick else FILE_MIB)
        where = work.parent
        print(
            f"python {platform.python_version()}, "
            f"{versions('secureml', 'cryptography', 'safetensors', 'numpy')}, "
            f"{os.cpu_count()} cores; {mib} MiB files on {where}; key from the environment\n"
        )
        plain = work / "plain.bin"
        write_plaintext(plain, mib)
        sealed = random_read_tables(km, plain, work, mib)
        print()
        sequential_table(km, plain, sealed, work, mib)
        plain.unlink()
        sealed.unlink()
        print()
        safetensors_tables(km, work, mib)
    print(f"\nran in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
