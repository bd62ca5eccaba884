"""Encrypted safetensors checkpoints: :func:`save_file`, :func:`load_file` and a lazy
:func:`safe_open`, over files encrypted by a :class:`~secureml.key_management.KeyManager`.

The plaintext is an ordinary safetensors file, byte for byte the layout the
``safetensors`` library writes: an 8-byte little-endian header length, a JSON header
padded with spaces to a multiple of 8 (``__metadata__`` first when given, then the
tensors, largest element type first and by name within one, ``data_offsets`` counted
from the start of the data), then the tensors' bytes back to back. So
``km.decrypt_file("m.safetensors.sml", "m.safetensors")`` gives a file
``safetensors.torch.load_file`` reads, and a file ``safetensors`` wrote, encrypted with
``km.encrypt_file``, loads here. No plaintext touches the disk either way:
:func:`save_file` streams the header and then each tensor's bytes through
``KeyManager.open_encrypting`` (memory stays at about a segment, plus one tensor's CPU
copy when it is not already in CPU memory), and :func:`safe_open` reads a tensor by
seeking to its bytes in ``KeyManager.open_encrypted``, which decrypts only the segments
they lie in.

The header is authenticated, but anyone holding the key could have written anything in
it, so it is checked as hostile input before anything is read through it: its length
(at most 100 MB, as ``safetensors`` allows, and within the file), a JSON object with no
repeated name, each tensor a known dtype, a shape of non-negative integers and
``data_offsets`` that match the shape and tile the data area exactly. A file that fails
raises a ``ValueError`` saying ``not a safetensors file`` and why (never a tensor's bytes).

torch and numpy are imported only when needed: saving imports neither (it recognises the
values it is given), loading imports the framework asked for.

Example:
    >>> save_file(model.state_dict(), "m.safetensors.sml",            # doctest: +SKIP
    ...           manager=km, key_name="models/key")
    >>> with safe_open("m.safetensors.sml", "pt", manager=km) as f:    # doctest: +SKIP
    ...     w = f.get_tensor("lm_head.weight")            # only its segments are decrypted
    ...     rows = f.get_slice("embed.weight")[1000:1010]  # only those rows' segments
"""

from __future__ import annotations

import json
import math
import operator
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, NoReturn

from .key_management import ConfigurationError, KeyManager
from .key_management._boundary import guarded, guarded_class

__all__ = [
    "MAX_HEADER_BYTES",
    "SafetensorsFile",
    "TensorSlice",
    "load_file",
    "safe_open",
    "save_file",
]

#: The largest header ``safetensors`` reads (and so the largest written here).
MAX_HEADER_BYTES = 100_000_000

_METADATA = "__metadata__"
_LENGTH = struct.Struct("<Q")
_MAX_DIM = (1 << 63) - 1  # what torch and numpy can size a dimension (and a tensor) to

# safetensors' dtypes (those of whole bytes), in the order of its ``Dtype`` enum, which
# orders the data (largest first, then by name): name -> (bytes per element, torch's
# dtype name, numpy's dtype or None where numpy has none).
_DTYPES: dict[str, tuple[int, str, str | None]] = {
    "BOOL": (1, "bool", "|b1"),
    "U8": (1, "uint8", "|u1"),
    "I8": (1, "int8", "|i1"),
    "F8_E5M2": (1, "float8_e5m2", None),
    "F8_E4M3": (1, "float8_e4m3fn", None),
    "F8_E8M0": (1, "float8_e8m0fnu", None),
    "F8_E4M3FNUZ": (1, "float8_e4m3fnuz", None),
    "F8_E5M2FNUZ": (1, "float8_e5m2fnuz", None),
    "I16": (2, "int16", "<i2"),
    "U16": (2, "uint16", "<u2"),
    "F16": (2, "float16", "<f2"),
    "BF16": (2, "bfloat16", None),
    "I32": (4, "int32", "<i4"),
    "U32": (4, "uint32", "<u4"),
    "F32": (4, "float32", "<f4"),
    "C64": (8, "complex64", "<c8"),
    "F64": (8, "float64", "<f8"),
    "I64": (8, "int64", "<i8"),
    "U64": (8, "uint64", "<u8"),
}
_RANK = {name: rank for rank, name in enumerate(_DTYPES)}
# numpy (kind, itemsize) -> safetensors dtype.
_NUMPY_DTYPES = {
    (code[1], int(code[2:])): name for name, (_, _, code) in _DTYPES.items() if code is not None
}
_FRAMEWORKS = {"pt": "pt", "torch": "pt", "np": "np", "numpy": "np"}


# -- saving --------------------------------------------------------------------------------


@guarded  # an error leaves without the frames that held tensor bytes (plaintext)
def save_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str] | BinaryIO,
    *,
    manager: KeyManager,
    key_name: str,
    metadata: Mapping[str, str] | None = None,
    aad: bytes = b"",
    segment_size: int | None = None,
) -> None:
    """Write ``tensors`` as a safetensors file encrypted under managed key ``key_name``.

    The header, then each tensor's bytes, are written one after another through
    ``manager.open_encrypting`` (no copy of the checkpoint is made in memory); a path
    ``path`` appears only once the whole file is written (see ``open_encrypting``).

    Values may be torch tensors and numpy arrays, mixed. As ``safetensors.torch`` does,
    a tensor on another device is copied to the CPU (one at a time, as it is written)
    and a non-contiguous one is refused; as ``safetensors.numpy`` does, a numpy array
    that is not C-contiguous or little-endian is written as a copy that is. Unlike
    ``safetensors``, tensors that share memory (tied weights) are each written whole.

    Args:
        tensors: Names to tensors (``model.state_dict()``).
        path: Where to write: a path, or a writable binary file object.
        manager: The key manager that encrypts.
        key_name: The managed key to encrypt under.
        metadata: Text-only ``__metadata__`` for the header (names to strings).
        aad: Associated data, needed again to read the file.
        segment_size: Plaintext bytes per segment (see ``open_encrypting``): smaller
            segments make lazy reads of small tensors decrypt less.

    Raises:
        TypeError: A name, metadata key or value is not a ``str``; a value is neither a
            torch tensor nor a numpy array, or has a dtype safetensors cannot hold.
        ValueError: A tensor is named ``__metadata__``, is sparse, not contiguous, or on
            the meta device; the header would exceed 100 MB.
        RuntimeError: This machine is big-endian.
    """
    _require_little_endian()
    planned = sorted(
        (_plan(name, value) for name, value in _items(tensors)),
        key=lambda entry: (-_RANK[entry.dtype], entry.name),
    )
    header = _header_bytes(planned, metadata)
    with manager.open_encrypting(path, key_name, aad=aad, segment_size=segment_size) as out:
        out.write(_LENGTH.pack(len(header)) + header)
        for entry in planned:
            data = entry.data()
            if data.nbytes != entry.nbytes:  # changed since it was planned
                raise RuntimeError(f"tensor {_shown(entry.name)} changed while it was saved")
            if data.nbytes:
                out.write(data)
            del data


@dataclass(frozen=True)
class _Planned:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    data: Callable[[], memoryview]  # its bytes, made when written


def _items(tensors: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a mapping of names to tensors, not {type(tensors).__name__}"
        )
    seen: set[str] = set()
    for given, value in tensors.items():
        if not isinstance(given, str):
            raise TypeError(f"tensor names must be str, not {type(given).__name__} ({given!r:.60})")
        name = str.__str__(given)  # a str subclass's own text, as the header will hold it
        if name in seen:
            raise ValueError(f"tensor {_shown(name)} is given twice: names must be unique")
        seen.add(name)
        if name == _METADATA:
            raise ValueError(
                f"a tensor cannot be named {_METADATA!r}: the header keeps it for metadata"
            )
        yield name, value


def _plan(name: str, value: Any) -> _Planned:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _plan_torch(torch, name, value)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return _plan_numpy(np, name, value)
    raise TypeError(
        f"tensor {_shown(name)} is a {type(value).__name__}: save torch tensors or numpy arrays"
    )


def _plan_torch(torch: Any, name: str, value: Any) -> _Planned:
    shown = _shown(name)
    if value.layout != torch.strided:
        raise ValueError(f"tensor {shown} is sparse: make it dense with .to_dense() first")
    if value.device.type == "meta":
        raise ValueError(f"tensor {shown} is on the meta device and has no data to save")
    if not value.is_contiguous():
        raise ValueError(
            f"tensor {shown} is not contiguous: call .contiguous() on it first "
            "(safetensors refuses it too)"
        )
    dtype = next(
        (st for st, (_, attr, _) in _DTYPES.items() if getattr(torch, attr, None) == value.dtype),
        None,
    )
    if dtype is None:
        raise TypeError(f"tensor {shown} is {value.dtype}, which safetensors cannot hold")

    def data() -> memoryview:
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.to("cpu")  # as safetensors.torch does
        tensor = tensor.resolve_conj().resolve_neg()  # lazy conj/neg views: their values
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())

    shape = tuple(int(d) for d in value.shape)
    return _Planned(name, dtype, shape, math.prod(shape) * _DTYPES[dtype][0], data)


def _plan_numpy(np: Any, name: str, value: Any) -> _Planned:
    dtype = _NUMPY_DTYPES.get((value.dtype.kind, value.dtype.itemsize))
    if dtype is None or value.dtype.fields is not None:
        raise TypeError(f"tensor {_shown(name)} is {value.dtype}, which safetensors cannot hold")

    def data() -> memoryview:
        array = np.asarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        array = np.ascontiguousarray(array)
        return memoryview(array.reshape(-1).view(np.uint8))

    shape = tuple(int(d) for d in value.shape)
    return _Planned(name, dtype, shape, math.prod(shape) * _DTYPES[dtype][0], data)


def _header_bytes(planned: list[_Planned], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"metadata must be a mapping of str to str, not {type(metadata).__name__}"
            )
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                bad = key if not isinstance(key, str) else value
                raise TypeError(
                    f"metadata keys and values must be str, not {type(bad).__name__} "
                    f"(at {key!r:.60}): convert it with str() or json.dumps()"
                )
        header[_METADATA] = dict(metadata)
    offset = 0
    for entry in planned:
        end = offset + entry.nbytes
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    try:  # as serde_json writes it: compact, non-ASCII as is
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a tensor name or metadata string is not valid Unicode") from None
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(
            f"the header would be {len(text)} bytes, over safetensors' {MAX_HEADER_BYTES}: "
            "fewer tensors or less metadata"
        )
    return text


# -- loading --------------------------------------------------------------------------------


@guarded
def load_file(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    manager: KeyManager,
    device: str = "cpu",
    aad: bytes = b"",
    framework: str = "pt",
) -> dict[str, Any]:
    """Read every tensor of an encrypted safetensors file (as ``safetensors``'
    ``load_file`` does a plain one), each segment decrypted once.

    Args:
        path: The encrypted file: a path, or a seekable binary file object.
        manager: The key manager that decrypts.
        device: Where the tensors go (torch only; numpy arrays are on the CPU).
        aad: The associated data it was written with.
        framework: ``pt`` (or ``torch``) for torch tensors, ``np`` (or ``numpy``) for
            numpy arrays.

    Returns:
        Names to tensors, by name.

    Raises:
        InvalidCiphertextError: Not a secureml file, a wrong key or ``aad``, or a
            segment that does not authenticate.
        ValueError: Not a safetensors file inside; an unknown ``framework``; a dtype
            the framework has no type for.
    """
    with safe_open(path, framework, manager=manager, device=device, aad=aad) as f:
        loaded = {name: f.get_tensor(name) for name in f.offset_keys()}
    return {name: loaded[name] for name in sorted(loaded)}


@guarded
def safe_open(
    path: str | os.PathLike[str] | BinaryIO,
    framework: str,
    *,
    manager: KeyManager,
    device: str = "cpu",
    aad: bytes = b"",
) -> SafetensorsFile:
    """Open an encrypted safetensors file for lazy reads, as ``safetensors.safe_open``
    opens a plain one: only the header is read now, and each tensor when it is asked for.

    Args:
        path: The encrypted file: a path, or a seekable binary file object.
        framework: ``pt`` (or ``torch``) or ``np`` (or ``numpy``).
        manager: The key manager that decrypts.
        device: Where tensors go (torch only).
        aad: The associated data it was written with.

    Returns:
        The open file; use it in a ``with`` block (or call ``close``).

    Raises:
        InvalidCiphertextError: Not a secureml file, cut short, a wrong key or ``aad``.
        ValueError: Not a safetensors file inside (the message says why); an unknown
            ``framework``, or a device other than ``cpu`` for numpy.
    """
    return SafetensorsFile(path, framework, manager=manager, device=device, aad=aad)


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@guarded_class
class SafetensorsFile:
    """An encrypted safetensors file open for lazy reads (made by :func:`safe_open`).

    Tensors are read on demand: :meth:`get_tensor` seeks to the tensor's bytes and
    decrypts only the segments they lie in (besides those opened with the file: the
    last, and the header's). Threads may share one; their reads take turns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        framework: str,
        *,
        manager: KeyManager,
        device: str = "cpu",
        aad: bytes = b"",
    ) -> None:
        _require_little_endian()
        kind = _FRAMEWORKS.get(framework) if isinstance(framework, str) else None
        if kind is None:
            raise ValueError(
                f"framework must be 'pt' (or 'torch') or 'np' (or 'numpy'), not {framework!r}"
            )
        if kind == "np" and device != "cpu":
            raise ValueError(f"numpy arrays live on the CPU: device must be 'cpu', not {device!r}")
        self._framework = kind
        self._module = _torch() if kind == "pt" else _numpy()
        self._device = device
        self._where = _where(path)
        self._lock = threading.Lock()
        self._reader: BinaryIO = manager.open_encrypted(path, aad=aad)
        try:
            self._entries, self._metadata, self._data_start = _read_header(
                self._reader, self._where
            )
        except BaseException:
            self._reader.close()
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (and the decrypting reader under it)."""
        self._reader.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return bool(self._reader.closed)

    @property
    def segments_decrypted(self) -> int:
        """Segments decrypted so far, those opened with the file included (one read
        again from the few kept is not counted): what to watch when choosing
        ``save_file``'s ``segment_size`` for lazy reads."""
        return int(getattr(self._reader, "segments_decrypted", 0))

    def keys(self) -> list[str]:
        """The tensors' names, sorted (as ``safetensors`` lists them)."""
        return sorted(self._entries)

    def offset_keys(self) -> list[str]:
        """The tensors' names in the order their bytes lie in the file."""
        return sorted(self._entries, key=lambda name: (self._entries[name].begin, name))

    def metadata(self) -> dict[str, str] | None:
        """The header's ``__metadata__`` (a copy), or ``None`` when it has none."""
        return None if self._metadata is None else dict(self._metadata)

    def get_tensor(self, name: str) -> Any:
        """Tensor ``name``, read and decrypted now (only the segments its bytes lie in).

        Raises:
            KeyError: The file has no tensor ``name``.
            InvalidCiphertextError: A segment of it does not authenticate.
            ValueError: Its dtype has no type in the framework; a ``BOOL`` tensor holds
                bytes other than 0 and 1.
        """
        entry = self._entry(name)
        return self._make(name, entry, self._read(entry.begin, entry.end), entry.shape)

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view of tensor ``name``: index it (``[a:b]``, ``[i]``, ``[a:b, ...]``)
        to read only the rows of its first dimension the index selects.

        Raises:
            KeyError: The file has no tensor ``name``.
        """
        return TensorSlice(self, name, self._entry(name))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._entries)} tensors"
        return f"<SafetensorsFile {self._where!r} ({state})>"

    # -- inside --------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"no tensor named {_shown(name)} in {self._where}")
        return entry

    def _read(self, begin: int, end: int) -> bytearray:
        buffer = bytearray(end - begin)
        with self._lock:  # a seek and its read, not split by another thread's
            self._reader.seek(self._data_start + begin)
            _fill(self._reader, buffer, self._where)
        return buffer

    def _make(self, name: str, entry: _Entry, buffer: bytearray, shape: tuple[int, ...]) -> Any:
        dtype = entry.dtype
        if dtype == "BOOL" and buffer.translate(None, b"\x00\x01"):
            raise ValueError(
                f"{self._where}: not a safetensors file (BOOL tensor {_shown(name)} "
                "holds bytes other than 0 and 1)"
            )
        _, torch_name, numpy_code = _DTYPES[dtype]
        if self._framework == "np":
            np = self._module
            if numpy_code is None:
                raise ValueError(
                    f"tensor {_shown(name)} is {dtype}, which numpy has no dtype for: "
                    "read it with framework='pt'"
                )
            return np.frombuffer(buffer, dtype=np.dtype(numpy_code)).reshape(shape)
        torch = self._module
        torch_dtype = getattr(torch, torch_name, None)
        if torch_dtype is None:
            raise ValueError(
                f"tensor {_shown(name)} is {dtype}, which this torch ({torch.__version__}) "
                "has no dtype for"
            )
        if buffer:
            tensor = torch.frombuffer(buffer, dtype=torch.uint8).view(torch_dtype).reshape(shape)
        else:  # frombuffer takes no empty buffer
            tensor = torch.empty(shape, dtype=torch_dtype)
        return tensor if self._device == "cpu" else tensor.to(self._device)


@guarded_class
class TensorSlice:
    """A lazy view of one tensor of a :class:`SafetensorsFile` (made by
    :meth:`SafetensorsFile.get_slice`): indexing it reads only the rows of the first
    dimension the index selects (an ``int``, or a ``slice`` with a positive step), and
    applies the rest of the index to them in memory.
    """

    def __init__(self, file: SafetensorsFile, name: str, entry: _Entry) -> None:
        self._file = file
        self._name = name
        self._entry = entry

    def get_shape(self) -> list[int]:
        """The whole tensor's shape."""
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        """The tensor's safetensors dtype (``F32``, ``BF16``, ...)."""
        return self._entry.dtype

    @guarded
    def __getitem__(self, index: Any) -> Any:
        parts = index if isinstance(index, tuple) else (index,)
        shape = self._entry.shape
        if not parts or not shape or parts[0] is Ellipsis:
            whole = self._file.get_tensor(self._name)
            return whole[index] if parts else whole
        first, rest = parts[0], parts[1:]
        rows = shape[0]
        if isinstance(first, slice):
            start, stop, step = first.indices(rows)
            if step <= 0:
                raise ValueError(f"slices of {_shown(self._name)} need a positive step")
            chosen = range(start, stop, step)
            low, high = (chosen[0], chosen[-1] + 1) if chosen else (0, 0)
            local: Any = slice(0, high - low, step)
        elif not isinstance(first, bool) and hasattr(type(first), "__index__"):
            first = operator.index(first)  # numpy's ints, a 0-d tensor
            position = first + rows if first < 0 else first
            if not 0 <= position < rows:
                raise IndexError(
                    f"index {first} is out of range for {rows} rows of {_shown(self._name)}"
                )
            low, high, local = position, position + 1, 0
        else:  # None, a bool, a list, a mask: what indexing the whole tensor gives
            return self._file.get_tensor(self._name)[index]
        row_bytes = math.prod(shape[1:]) * _DTYPES[self._entry.dtype][0]
        begin = self._entry.begin + low * row_bytes
        block = self._file._read(begin, begin + (high - low) * row_bytes)
        tensor = self._file._make(self._name, self._entry, block, (high - low, *shape[1:]))
        within = (local, *rest)
        return tensor[within]

    def __repr__(self) -> str:
        return f"<TensorSlice {_shown(self._name)} {self.get_dtype()} {self.get_shape()}>"


# -- the header, as hostile input -----------------------------------------------------------


def _read_header(
    reader: BinaryIO, where: str
) -> tuple[dict[str, _Entry], dict[str, str] | None, int]:
    size = reader.seek(0, os.SEEK_END)
    reader.seek(0)
    if size < _LENGTH.size:
        _not_safetensors(where, f"{size} bytes, fewer than the header's length takes")
    prefix = bytearray(_LENGTH.size)
    _fill(reader, prefix, where)
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        _not_safetensors(where, f"a header of {length} bytes, over {MAX_HEADER_BYTES}")
    if length > size - _LENGTH.size:
        _not_safetensors(where, f"a header of {length} bytes in a file of {size}")
    raw = bytearray(length)
    _fill(reader, raw, where)
    data_start = _LENGTH.size + length
    entries, metadata = _parse_header(raw, size - data_start, where)
    return entries, metadata, data_start


def _parse_header(
    raw: bytes | bytearray, data_bytes: int, where: str
) -> tuple[dict[str, _Entry], dict[str, str] | None]:
    if not raw.startswith(b"{"):
        _not_safetensors(where, "the header does not start with '{'")
    detail = None
    try:
        parsed = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_repeats,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        detail = "the header is not UTF-8"
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, _HeaderError) else "the header is not JSON"
    if detail is not None:  # raised out here: the parser's error holds the header's text
        _not_safetensors(where, detail)
    if not isinstance(parsed, dict):
        _not_safetensors(where, "the header is not a JSON object")
    metadata: dict[str, str] | None = None
    entries: dict[str, _Entry] = {}
    for name, info in parsed.items():
        if name == _METADATA:
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                _not_safetensors(where, "__metadata__ is not an object of strings")
            metadata = info
        else:
            entries[name] = _parse_entry(name, info, where)
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            problem = "overlap another tensor's" if entry.begin < end else "leave a gap before it"
            _not_safetensors(where, f"the data_offsets of tensor {_shown(name)} {problem}")
        end = entry.end
    if end != data_bytes:
        _not_safetensors(
            where, f"the tensors take {end} bytes of the {data_bytes} after the header"
        )
    return entries, metadata


def _parse_entry(name: str, info: Any, where: str) -> _Entry:
    shown = _shown(name)
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        _not_safetensors(where, f"tensor {shown} is not an object of dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        _not_safetensors(where, f"tensor {shown} has an unknown or unsupported dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        _not_safetensors(
            where, f"the shape of tensor {shown} is not a list of non-negative integers"
        )
    if math.prod(d for d in shape if d) > _MAX_DIM:
        _not_safetensors(where, f"the shape of tensor {shown} is too large")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o) for o in offsets):
        _not_safetensors(
            where, f"the data_offsets of tensor {shown} are not two non-negative integers"
        )
    begin, end = offsets
    if end < begin or end - begin != math.prod(shape) * _DTYPES[dtype][0]:
        _not_safetensors(
            where, f"the data_offsets of tensor {shown} do not match its shape and dtype"
        )
    return _Entry(dtype, tuple(shape), begin, end)


class _HeaderError(ValueError):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:  # json.loads would keep the last: readers could disagree
            raise _HeaderError(f"the header names {_shown(key)} twice")
        found[key] = value
    return found


def _no_constant(word: str) -> NoReturn:
    raise _HeaderError(f"the header holds {word}, which is not JSON")


def _is_size(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_DIM


def _not_safetensors(where: str, detail: str) -> NoReturn:
    raise ValueError(f"{where}: not a safetensors file ({detail})") from None


# -- helpers ----------------------------------------------------------------------------------


def _fill(reader: IO[bytes], buffer: bytearray, where: str) -> None:
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        got = reader.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            _not_safetensors(where, "the file ends inside the data the header describes")
        done += got


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError(
            "encrypted safetensors need a little-endian machine: safetensors stores "
            "little-endian bytes, and this one is big-endian"
        )


def _shown(name: str) -> str:
    """A tensor name for a message: quoted, and cut short (a header may hold anything)."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _where(path: str | os.PathLike[str] | BinaryIO) -> str:
    if isinstance(path, (str, os.PathLike)):
        return os.fsdecode(path)
    name = getattr(path, "name", None)
    return name if isinstance(name, str) else f"<{type(path).__name__}>"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigurationError("framework='pt' needs torch: pip install torch") from None
    return torch


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ConfigurationError(
            "framework='np' needs numpy: pip install 'secureml[safetensors]'"
        ) from None
    return numpy
