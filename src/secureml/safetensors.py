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
``data_offsets`` that match the shape and tile the data area exactly. It is read as
``safetensors`` (serde_json) reads it, not as ``json.loads`` would: an unpaired
surrogate escape is refused, ``-0`` is no size, ``"__metadata__": null`` is no
metadata, and keys of a tensor's entry besides those three are ignored. A file that
fails raises a ``ValueError`` saying ``not a safetensors file`` and why: never a
tensor's bytes, at most a tensor name (cut short), and no parser's error holding the
header's text in its hidden ``__context__``.

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

import contextlib
import json
import math
import operator
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, NamedTuple, NoReturn

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
_ITEMSIZES = {name: size for name, (size, _, _) in _DTYPES.items()}
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
            the meta device; a name or metadata key is given twice; the header would
            exceed 100 MB.
        RuntimeError: A tensor's dtype, shape or size changed while it was saved (its
            ``.data`` swapped by another thread); this machine is big-endian.
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
            data = entry.data()  # None when its dtype or shape changed since it was planned
            if data is None or data.nbytes != entry.nbytes:
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
    data: Callable[[], memoryview | None]  # its bytes, made when written (None: changed)


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

    planned_dtype, shape = value.dtype, tuple(int(d) for d in value.shape)

    def data() -> memoryview | None:
        tensor = value.detach()
        if (
            tensor.dtype != planned_dtype
            or tuple(tensor.shape) != shape
            or tensor.layout != torch.strided
            or tensor.device.type == "meta"
        ):  # another thread swapped its .data since it was planned
            return None
        if tensor.device.type != "cpu":
            tensor = tensor.to("cpu")  # as safetensors.torch does
        tensor = tensor.resolve_conj().resolve_neg()  # lazy conj/neg views: their values
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())

    return _Planned(name, dtype, shape, math.prod(shape) * _DTYPES[dtype][0], data)


def _plan_numpy(np: Any, name: str, value: Any) -> _Planned:
    dtype = _NUMPY_DTYPES.get((value.dtype.kind, value.dtype.itemsize))
    if dtype is None or value.dtype.fields is not None:
        raise TypeError(f"tensor {_shown(name)} is {value.dtype}, which safetensors cannot hold")

    shape = tuple(int(d) for d in value.shape)

    def data() -> memoryview | None:
        array = np.asarray(value)
        if (
            _NUMPY_DTYPES.get((array.dtype.kind, array.dtype.itemsize)) != dtype
            or array.dtype.fields is not None
            or array.shape != shape
        ):  # its dtype or shape was set in place since it was planned
            return None
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        array = np.ascontiguousarray(array)
        return memoryview(array.reshape(-1).view(np.uint8))

    return _Planned(name, dtype, shape, math.prod(shape) * _DTYPES[dtype][0], data)


def _header_bytes(planned: list[_Planned], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"metadata must be a mapping of str to str, not {type(metadata).__name__}"
            )
        texts: dict[str, str] = {}
        for given, value in metadata.items():
            if not isinstance(given, str) or not isinstance(value, str):
                bad = given if not isinstance(given, str) else value
                raise TypeError(
                    f"metadata keys and values must be str, not {type(bad).__name__} "
                    f"(at {given!r:.60}): convert it with str() or json.dumps()"
                )
            key = str.__str__(given)  # a str subclass's own text, as the header will hold it
            if key in texts:
                raise ValueError(f"metadata key {_shown(key)} is given twice: keys must be unique")
            texts[key] = str.__str__(value)
        header[_METADATA] = texts
    offset = 0
    for entry in planned:
        end = offset + entry.nbytes
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = None
    # raised out of the with: the encoder's error holds the header's text
    with contextlib.suppress(UnicodeEncodeError):  # as serde_json writes: compact, UTF-8
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if text is None:
        raise ValueError("a tensor name or metadata string is not valid Unicode")
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
    device: Any = "cpu",
    aad: bytes = b"",
    framework: str = "pt",
) -> dict[str, Any]:
    """Read every tensor of an encrypted safetensors file (as ``safetensors``'
    ``load_file`` does a plain one), in the order their bytes lie in the file: each
    segment is decrypted once, the last one at most twice (it is also read, and proven,
    when the file opens).

    Args:
        path: The encrypted file: a path, or a seekable binary file object.
        manager: The key manager that decrypts.
        device: Where the tensors go (torch only; numpy arrays are on the CPU): what
            ``torch.device`` takes.
        aad: The associated data it was written with.
        framework: ``pt`` (or ``torch``) for torch tensors, ``np`` (or ``numpy``) for
            numpy arrays.

    Returns:
        Names to tensors, by name.

    Raises:
        InvalidCiphertextError: Not a secureml file, a wrong key or ``aad``, or a
            segment that does not authenticate.
        ValueError: Not a safetensors file inside; an unknown ``framework``; a device
            torch does not know or cannot use here; a dtype or shape the framework
            cannot make.
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
    device: Any = "cpu",
    aad: bytes = b"",
) -> SafetensorsFile:
    """Open an encrypted safetensors file for lazy reads, as ``safetensors.safe_open``
    opens a plain one: only the header is read now, and each tensor when it is asked for.

    Args:
        path: The encrypted file: a path, or a seekable binary file object.
        framework: ``pt`` (or ``torch``) or ``np`` (or ``numpy``).
        manager: The key manager that decrypts.
        device: Where tensors go (torch only): what ``torch.device`` takes, checked
            before the file is opened.
        aad: The associated data it was written with.

    Returns:
        The open file; use it in a ``with`` block (or call ``close``).

    Raises:
        InvalidCiphertextError: Not a secureml file, cut short, a wrong key or ``aad``.
        ValueError: Not a safetensors file inside (the message says why); an unknown
            ``framework``, or a device other than ``cpu`` for numpy; a device torch does
            not know, ``meta``, or one this process cannot use (no CUDA, say).
    """
    return SafetensorsFile(path, framework, manager=manager, device=device, aad=aad)


class _Entry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


#: Strided row slices: rows at least this far apart (the gap between one chosen row's
#: end and the next one's start) are read one by one; closer ones are read together in
#: windows of at most _WINDOW bytes, from which the chosen rows are copied out.
_FAR = 1 << 16
_WINDOW = 1 << 22


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
        device: Any = "cpu",
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
        # Checked before anything is decrypted: where the tensors go, or None (the CPU).
        self._device = _torch_device(self._module, device) if kind == "pt" else None
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
            ValueError: Its dtype or shape has no type in the framework (numpy makes
                at most 64 dimensions, BF16 and float8 not at all); a ``BOOL`` tensor
                holds bytes other than 0 and 1.
        """
        entry = self._entry(name)
        return self._make(name, entry, self._read(entry.begin, entry.end), entry.shape)

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view of tensor ``name``: index it (``[a:b]``, ``[i]``, ``[a:b:k, ...]``)
        to read only the rows of its first dimension the index selects (see
        :class:`TensorSlice` for what is read).

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
        self._read_into(begin, memoryview(buffer))
        return buffer

    def _read_into(self, begin: int, view: memoryview) -> None:
        with self._lock:  # a seek and its read, not split by another thread's
            self._reader.seek(self._data_start + begin)
            _fill(self._reader, view, self._where)

    def _make(self, name: str, entry: _Entry, buffer: bytearray, shape: tuple[int, ...]) -> Any:
        dtype = entry.dtype
        if dtype == "BOOL" and buffer.translate(None, b"\x00\x01"):
            raise ValueError(
                f"{self._where}: not a safetensors file (BOOL tensor {_shown(name)} "
                "holds bytes other than 0 and 1)"
            )
        _, torch_name, numpy_code = _DTYPES[dtype]
        made: Any = None
        if self._framework == "np":
            np = self._module
            if numpy_code is None:
                raise ValueError(
                    f"tensor {_shown(name)} is {dtype}, which numpy has no dtype for: "
                    "read it with framework='pt'"
                )
            # numpy makes at most 64 dimensions, and no shape over 2**63 bytes even
            # with a 0 in it: refused below, in this module's words
            with contextlib.suppress(ValueError):
                made = np.frombuffer(buffer, dtype=np.dtype(numpy_code)).reshape(shape)
        else:
            torch = self._module
            torch_dtype = getattr(torch, torch_name, None)
            if torch_dtype is None:
                raise ValueError(
                    f"tensor {_shown(name)} is {dtype}, which this torch ({torch.__version__}) "
                    "has no dtype for"
                )
            with contextlib.suppress(ValueError, RuntimeError):  # refused below, too
                if buffer:
                    made = torch.frombuffer(buffer, dtype=torch.uint8).view(torch_dtype)
                    made = made.reshape(shape) if made.numel() == math.prod(shape) else None
                else:  # frombuffer takes no empty buffer
                    made = torch.empty(shape, dtype=torch_dtype)
            if made is not None and self._device is not None:
                made = made.to(self._device)
        if made is None:
            shown_shape = str(list(shape))
            if len(shown_shape) > 60:
                shown_shape = shown_shape[:57] + "..."
            framework = "numpy" if self._framework == "np" else "torch"
            raise ValueError(
                f"tensor {_shown(name)} has a shape {framework} cannot make "
                f"({len(shape)} dimensions: {shown_shape})"
                + (": read it with framework='pt'" if framework == "numpy" else "")
            )
        return made


@guarded_class
class TensorSlice:
    """A lazy view of one tensor of a :class:`SafetensorsFile` (made by
    :meth:`SafetensorsFile.get_slice`).

    Indexing it with an ``int`` (numpy's and 0-d integer tensors too) or a ``slice``
    with a positive step first reads only the rows of the first dimension it selects,
    then applies the rest of the index to them in memory: a step of 1 is one read of
    those rows; with a larger step, rows 64 KiB or more apart are read one by one, and
    closer ones in windows of at most 4 MiB from which the chosen rows are copied (the
    rows between them are decrypted but not kept). What comes back never holds on to
    much more than itself: a result less than half the rows read is a copy. Any other
    first index (``...``, ``None``, a bool, a list, a tensor or array of indices or a
    mask) reads the whole tensor and indexes it as ``get_tensor(name)[index]`` would.
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
        first = _first_position(parts[0]) if parts and shape else _WHOLE
        if first is _WHOLE:
            whole = self._file.get_tensor(self._name)
            return whole[index] if parts else whole
        rows = shape[0]
        if isinstance(first, slice):
            start, stop, step = first.indices(rows)
            if step <= 0:
                raise ValueError(f"slices of {_shown(self._name)} need a positive step")
            chosen = range(start, stop, step)
            local: Any = slice(None)
        else:
            position = first + rows if first < 0 else first
            if not 0 <= position < rows:
                raise IndexError(
                    f"index {first} is out of range for {rows} rows of {_shown(self._name)}"
                )
            chosen, local = range(position, position + 1), 0
        block = self._rows(chosen)
        tensor = self._file._make(self._name, self._entry, block, (len(chosen), *shape[1:]))
        within = (local, *parts[1:])
        result = tensor[within]
        if result.nbytes * 2 < len(block):  # a few of the rows read: let go of the rest
            copy = getattr(result, "clone", None)
            result = result.copy() if copy is None else copy(memory_format=self._contiguous())
        return result

    def __repr__(self) -> str:
        return f"<TensorSlice {_shown(self._name)} {self.get_dtype()} {self.get_shape()}>"

    def _contiguous(self) -> Any:
        return self._file._module.contiguous_format

    def _rows(self, chosen: range) -> bytearray:
        """The bytes of rows ``chosen`` (a range with a positive step), back to back."""
        row_bytes = math.prod(self._entry.shape[1:]) * _DTYPES[self._entry.dtype][0]
        count, step = len(chosen), chosen.step
        begin = self._entry.begin + chosen.start * row_bytes
        if count <= 1 or step == 1 or not row_bytes:
            return self._file._read(begin, begin + count * row_bytes)  # one span (or none)
        out = bytearray(count * row_bytes)
        stride = step * row_bytes
        together = 1 if stride - row_bytes >= _FAR else max(1, _WINDOW // stride)
        if together == 1:  # far apart: each row its own read, straight into place
            view = memoryview(out)
            for i in range(count):
                self._file._read_into(begin + i * stride, view[i * row_bytes : (i + 1) * row_bytes])
            return out
        module = self._file._module
        into = module.frombuffer(out, dtype=module.uint8).reshape(count, row_bytes)
        window = bytearray(together * stride)  # `together` rows, each followed by its gap
        rows_of = module.frombuffer(window, dtype=module.uint8).reshape(together, stride)
        try:
            for i in range(0, count, together):
                k = min(together, count - i)
                self._file._read_into(
                    begin + i * stride, memoryview(window)[: (k - 1) * stride + row_bytes]
                )
                into[i : i + k] = rows_of[:k, :row_bytes]
        finally:
            window[:] = bytes(len(window))  # the rows between, read but not asked for
        return out


_WHOLE: Any = object()  # a first index that reads the whole tensor


def _first_position(first: Any) -> Any:  # noqa: PLR0911 - one return per kind of index
    """What a slice's first index is, as ``torch`` and ``numpy`` read it: a ``slice``,
    an ``int``, or ``_WHOLE`` (``...``, ``None``, a bool, a list, indices or a mask)."""
    if isinstance(first, slice):
        return first
    if first is None or first is Ellipsis or isinstance(first, (bool, list)):
        return _WHOLE
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(first, torch.Tensor):
        # torch takes a 0-d integer tensor as an int, a uint8 one as a mask (as a bool)
        integer = not (first.is_floating_point() or first.is_complex())
        if first.ndim == 0 and integer and first.dtype not in (torch.bool, torch.uint8):
            return operator.index(first)
        return _WHOLE
    np = sys.modules.get("numpy")
    if np is not None and isinstance(first, (np.ndarray, np.generic)):
        if first.ndim == 0 and first.dtype.kind in "iu":
            return operator.index(first)
        return _WHOLE
    if hasattr(type(first), "__index__"):
        return operator.index(first)
    return _WHOLE


def _torch_device(torch: Any, device: Any) -> Any:
    """``device`` as a ``torch.device``, checked usable, or None for the CPU."""
    try:
        chosen = torch.device(device)
    except (TypeError, ValueError, RuntimeError):
        chosen = None  # raised out of here, in one line
    if chosen is None:
        raise ValueError(
            f"device {device!r:.60} is not a torch device (such as 'cpu', 'cuda' or 'cuda:1')"
        )
    if chosen.type == "meta":
        raise ValueError("device 'meta' holds no data: read tensors to a real device")
    if chosen.type == "cpu":
        return None
    problem = None
    try:
        torch.empty(0, device=chosen)
    except Exception as exc:  # torch says "not compiled with CUDA" with an AssertionError
        lines = str(exc).strip().splitlines()
        problem = (lines[0] if lines else type(exc).__name__)[:120]
    if problem is not None:
        raise ValueError(f"device {str(chosen)!r} cannot be used here: {problem}")
    return chosen


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
    parsed, problem = _load_json(raw)
    if problem is not None:  # raised out here: the parser's error holds the header's text
        _not_safetensors(where, problem)
    metadata: dict[str, str] | None = None
    entries: dict[str, _Entry] = {}
    end, in_order = 0, True  # the tensors tile the data in the header's order (as written)
    for name, info in parsed.items():
        if name == _METADATA:
            if info is not None and (
                type(info) is not dict or not all(type(v) is str for v in info.values())
            ):
                _not_safetensors(where, "__metadata__ is not an object of strings")
            metadata = info
            continue
        entry = entries[name] = _parse_entry(name, info, where)
        if in_order and entry.begin == end:
            end = entry.end
        else:
            in_order = False
    if not in_order:  # tile them by their offsets
        end = 0
        for begin, stop, name in sorted((e.begin, e.end, n) for n, e in entries.items()):
            if begin != end:
                problem = "overlap another tensor's" if begin < end else "leave a gap before it"
                _not_safetensors(where, f"the data_offsets of tensor {_shown(name)} {problem}")
            end = stop
    if end != data_bytes:
        _not_safetensors(
            where, f"the tensors take {end} bytes of the {data_bytes} after the header"
        )
    return entries, metadata


def _load_json(  # noqa: PLR0911 - one return per way a header fails
    raw: bytes | bytearray,
) -> tuple[dict[str, Any], str | None]:
    """The header parsed, or why it is not a safetensors header (no exception of the
    parser's leaves here: they hold the header's text)."""
    if not raw.startswith(b"{"):
        return {}, "the header does not start with '{'"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "the header is not UTF-8"
    # serde_json (safetensors) reads -0 as a float, no size: so do we (a rare hook)
    parse_int = _int_or_float_zero if _NEGATIVE_ZERO.search(text) else None
    try:
        parsed = json.loads(
            text,
            object_pairs_hook=_no_repeats,
            parse_constant=_no_constant,
            parse_int=parse_int,
        )
    except _HeaderError as exc:
        return {}, str(exc)
    except (ValueError, RecursionError):
        return {}, "the header is not JSON"
    if type(parsed) is not dict:
        return {}, "the header is not a JSON object"
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(parsed):
        return {}, "the header holds an unpaired surrogate escape, which is not Unicode"
    return parsed, None


def _parse_entry(name: str, info: Any, where: str) -> _Entry:
    """Tensor ``name``'s entry checked: a dict of a known dtype, a shape of sizes and
    two data_offsets matching it (as safetensors does, other keys are let be)."""
    if type(info) is dict:
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    else:
        dtype = shape = offsets = None
    if dtype is None or shape is None or offsets is None:
        _not_safetensors(
            where, f"tensor {_shown(name)} is not an object of dtype, shape and data_offsets"
        )
    itemsize = _ITEMSIZES.get(dtype) if type(dtype) is str else None
    if not itemsize:
        _not_safetensors(
            where, f"tensor {_shown(name)} has an unknown or unsupported dtype {dtype!r:.40}"
        )
    if type(shape) is not list or (shape and not _sizes(shape)):
        _not_safetensors(
            where, f"the shape of tensor {_shown(name)} is not a list of non-negative integers"
        )
    count = _count(shape)
    if count is None:
        _not_safetensors(where, f"the shape of tensor {_shown(name)} is too large")
    if type(offsets) is not list or len(offsets) != 2 or not _sizes(offsets):
        _not_safetensors(
            where, f"the data_offsets of tensor {_shown(name)} are not two non-negative integers"
        )
    begin, end = offsets
    if end < begin or end - begin != count * itemsize:
        _not_safetensors(
            where, f"the data_offsets of tensor {_shown(name)} do not match its shape and dtype"
        )
    return _Entry(dtype, tuple(shape), begin, end)


def _sizes(values: list[Any]) -> bool:
    """Whether ``values`` (not empty) are all ints (not bools) of 0 to ``_MAX_DIM``."""
    return set(map(type, values)) == _INT and min(values) >= 0 and max(values) <= _MAX_DIM


def _count(shape: list[int]) -> int | None:
    """The elements of ``shape``, or None when it is too large (its dimensions other
    than 0 taking more than ``_MAX_DIM``, as one without a 0 would), without multiplying
    out a shape of millions of dimensions: each of 2 or more at least doubles it."""
    if len(shape) > 63:
        big = [d for d in shape if d > 1]
        if len(big) > 63:
            return None
        nonzero = math.prod(big)
    else:
        nonzero = math.prod(filter(None, shape))
    if nonzero > _MAX_DIM:
        return None
    return 0 if 0 in shape else nonzero


class _HeaderError(ValueError):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # json.loads would keep the last: readers could disagree
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _HeaderError(f"the header names {_shown(key)} twice")
            seen.add(key)
    return found


def _no_constant(word: str) -> NoReturn:
    raise _HeaderError(f"the header holds {word}, which is not JSON")


def _int_or_float_zero(digits: str) -> int | float:
    return -0.0 if digits == "-0" else int(digits)


def _holds_lone_surrogate(parsed: Any) -> bool:
    todo = [parsed]
    while todo:
        item = todo.pop()
        if type(item) is str:
            if _SURROGATE.search(item):
                return True
        elif type(item) is dict:
            todo += item
            todo += item.values()
        elif type(item) is list:
            todo += item
    return False


_INT = {int}
_NEGATIVE_ZERO = re.compile(r"-0(?![.eE0-9])")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_safetensors(where: str, detail: str) -> NoReturn:
    raise ValueError(f"{where}: not a safetensors file ({detail})") from None


# -- helpers ----------------------------------------------------------------------------------


def _fill(reader: IO[bytes], buffer: bytearray | memoryview, where: str) -> None:
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
