"""Encrypted safetensors (``secureml.safetensors``): round trips in torch and numpy, the
plaintext being an ordinary safetensors file (interop with the ``safetensors`` library
both ways), lazy reads that decrypt only a tensor's segments, and headers that a key
holder crafted."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from secureml.key_management import InvalidCiphertextError, KeyManager
from secureml.key_management._envelope import TAG_BYTES
from secureml.safetensors import load_file, safe_open, save_file

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
st_torch = pytest.importorskip("safetensors.torch")
st_numpy = pytest.importorskip("safetensors.numpy")

pytestmark = pytest.mark.integration

KEY = "models/key"
SEGMENT = 65536

# Every torch dtype safetensors names (those this torch has).
TORCH_DTYPES = [
    name
    for name in [
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
        "uint8", "bool", "uint16", "uint32", "uint64", "complex64", "float8_e4m3fn",
        "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    ]
    if hasattr(torch, name)
]  # fmt: skip


@pytest.fixture
def km(monkeypatch: pytest.MonkeyPatch) -> KeyManager:
    monkeypatch.setenv("SECUREML_MODELS_KEY", "hex:" + os.urandom(32).hex())
    return KeyManager(declared_keys=[KEY])


def _random(dtype: Any, shape: tuple[int, ...]) -> Any:
    """Random values of ``dtype`` (bit patterns for the small floats, whose every byte
    is not a valid value to compute with, but is one to store)."""
    count = 1
    for d in shape:
        count *= d
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (count * size,), dtype=torch.uint8)
    if dtype.is_floating_point and size == 1:
        raw = raw & 0x7E | 0x01  # no NaN or special patterns: still byte-compared
    return raw.view(dtype).reshape(shape)


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equal, same dtype and shape (NaNs and float8 included)."""
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _torch_state() -> dict[str, Any]:
    state = {f"t.{name}": _random(getattr(torch, name), (3, 5)) for name in TORCH_DTYPES}
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 7)
    state["empty.bf16"] = torch.zeros(4, 0, dtype=torch.bfloat16)
    state["deep"] = torch.randn(2, 3, 4, 5)
    state["naïve ✓"] = torch.arange(4, dtype=torch.int16)  # non-ASCII names
    return state


def _layout(plain: bytes) -> tuple[int, dict[str, Any]]:
    (length,) = struct.unpack("<Q", plain[:8])
    return 8 + length, json.loads(plain[8 : 8 + length])


def _write_plain(km: KeyManager, path: Path, plain: bytes, *, segment_size: int = SEGMENT) -> None:
    with km.open_encrypting(path, KEY, segment_size=segment_size) as out:
        out.write(plain)


# -- round trips ---------------------------------------------------------------------------


def test_torch_round_trip_of_every_dtype(km: KeyManager, tmp_path: Path) -> None:
    state = _torch_state()
    state["tied"] = state["deep"]  # shared storage: written whole, twice
    state["view"] = state["deep"][1]  # a contiguous view into it
    path = tmp_path / "m.safetensors.sml"
    save_file(state, path, manager=km, key_name=KEY, metadata={"format": "pt", "é": "✓"})
    back = load_file(path, manager=km)
    assert list(back) == sorted(state)
    for name, tensor in state.items():
        assert _same(back[name], tensor), name
    assert back["tied"].data_ptr() != back["deep"].data_ptr()
    with safe_open(path, "torch", manager=km) as f:
        assert f.metadata() == {"format": "pt", "é": "✓"}
        assert f.keys() == sorted(state)
        assert _same(f.get_tensor("t.bfloat16"), state["t.bfloat16"])


def test_conjugate_and_negative_views_are_saved_as_their_values(
    km: KeyManager, tmp_path: Path
) -> None:
    z = torch.randn(4, dtype=torch.complex64)
    state = {"conj": z.conj(), "neg": torch._neg_view(torch.randn(3))}
    save_file(state, tmp_path / "v.sml", manager=km, key_name=KEY)
    back = load_file(tmp_path / "v.sml", manager=km)
    assert torch.equal(back["conj"], z.conj().resolve_conj())
    assert torch.equal(back["neg"], state["neg"].resolve_neg())


def test_numpy_round_trip(km: KeyManager, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    arrays = {
        f"a.{code}": rng.integers(0, 100, size=(4, 3)).astype(code)
        for code in ["f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "c8"]
    }
    arrays["bool"] = rng.random(6) > 0.5
    arrays["scalar"] = np.array(1.5, dtype=np.float32)
    arrays["empty"] = np.zeros((0, 3), dtype=np.int64)
    transposed = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    big_endian = np.arange(5, dtype=">i4")
    path = tmp_path / "a.sml"
    save_file(
        {**arrays, "transposed": transposed, "big": big_endian},
        path,
        manager=km,
        key_name=KEY,
    )
    back = load_file(path, manager=km, framework="np")
    for name, array in arrays.items():
        assert _same(back[name], array), name
    assert np.array_equal(back["transposed"], transposed)
    assert back["big"].dtype == np.dtype("<i4")
    assert np.array_equal(back["big"], big_endian)
    back["scalar"][()] = 3  # arrays handed out are writable, like safetensors.numpy's
    as_torch = load_file(path, manager=km, framework="pt")
    assert torch.equal(as_torch["a.f4"], torch.from_numpy(arrays["a.f4"]))


def test_mixed_torch_and_numpy_values(km: KeyManager, tmp_path: Path) -> None:
    state = {"t": torch.arange(3.0), "n": np.arange(3, dtype=np.int16)}
    save_file(state, tmp_path / "x.sml", manager=km, key_name=KEY)
    back = load_file(tmp_path / "x.sml", manager=km)
    assert torch.equal(back["t"], state["t"])
    assert torch.equal(back["n"], torch.arange(3, dtype=torch.int16))


def test_saving_numpy_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy\n"
        "from secureml.key_management import KeyManager\n"
        "from secureml.safetensors import save_file, load_file\n"
        "km = KeyManager(declared_keys=['models/key'])\n"
        "save_file({'a': numpy.ones(3)}, sys.argv[1], manager=km, key_name='models/key')\n"
        "assert load_file(sys.argv[1], manager=km, framework='np')['a'].sum() == 3\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECUREML_", "VAULT_"))}
    env["SECUREML_MODELS_KEY"] = "hex:" + os.urandom(32).hex()
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.sml")], env=env, check=True)


# -- interop with the safetensors library --------------------------------------------------


def test_the_decrypted_file_is_the_file_safetensors_writes(km: KeyManager, tmp_path: Path) -> None:
    state = _torch_state()
    state.pop("t.float8_e8m0fnu", None)  # safetensors 0.8 writes it but cannot load it
    save_file(state, tmp_path / "m.sml", manager=km, key_name=KEY, metadata={"format": "pt"})
    km.decrypt_file(tmp_path / "m.sml", tmp_path / "m.safetensors")
    plain = (tmp_path / "m.safetensors").read_bytes()
    assert plain == st_torch.save(state, metadata={"format": "pt"})  # byte for byte
    loaded = st_torch.load(plain)
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        assert _same(loaded[name], tensor), name
    start, header = _layout(plain)
    assert start % 8 == 0
    assert header["__metadata__"] == {"format": "pt"}


def test_a_file_safetensors_wrote_loads_once_encrypted(km: KeyManager, tmp_path: Path) -> None:
    state = _torch_state()
    state.pop("t.float8_e8m0fnu", None)
    st_torch.save_file(state, tmp_path / "m.safetensors", metadata={"a": "1", "b": "2"})
    km.encrypt_file(tmp_path / "m.safetensors", tmp_path / "m.sml", KEY)
    back = load_file(tmp_path / "m.sml", manager=km)
    for name, tensor in state.items():
        assert _same(back[name], tensor), name
    with safe_open(tmp_path / "m.sml", "pt", manager=km) as f:
        assert f.metadata() == {"a": "1", "b": "2"}

    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array(True)}
    st_numpy.save_file(arrays, tmp_path / "n.safetensors")
    km.encrypt_file(tmp_path / "n.safetensors", tmp_path / "n.sml", KEY)
    back_np = load_file(tmp_path / "n.sml", manager=km, framework="numpy")
    assert all(_same(back_np[k], v) for k, v in arrays.items())
    with safe_open(tmp_path / "n.sml", "np", manager=km) as f:
        assert f.metadata() is None


def test_an_empty_checkpoint(km: KeyManager, tmp_path: Path) -> None:
    save_file({}, tmp_path / "e.sml", manager=km, key_name=KEY)
    km.decrypt_file(tmp_path / "e.sml", tmp_path / "e.safetensors")
    assert (tmp_path / "e.safetensors").read_bytes() == st_torch.save({})
    assert load_file(tmp_path / "e.sml", manager=km) == {}


# -- lazy reads ----------------------------------------------------------------------------


def _segments(start: int, end: int) -> set[int]:
    return set(range(start // SEGMENT, -(-end // SEGMENT))) if end > start else set()


@pytest.fixture
def big(km: KeyManager, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Five tensors of 300 KB in 64 KiB segments (about 23)."""
    state = {f"layer{i}": torch.randn(250, 300) for i in range(5)}
    path = tmp_path / "big.sml"
    save_file(state, path, manager=km, key_name=KEY, segment_size=SEGMENT)
    return path, state


def test_get_tensor_decrypts_only_that_tensors_segments(
    km: KeyManager, big: tuple[Path, dict[str, Any]]
) -> None:
    path, state = big
    with safe_open(path, "pt", manager=km) as f:
        data_start = f._data_start
        plain_size = data_start + 5 * 300_000
        last = (plain_size - 1) // SEGMENT
        opened = {0, last}  # the last (at open) and the header's
        assert f.segments_decrypted == len(opened)
        entry = f._entries["layer2"]
        wanted = _segments(data_start + entry.begin, data_start + entry.end)
        assert 0 not in wanted
        assert last not in wanted
        tensor = f.get_tensor("layer2")
        assert torch.equal(tensor, state["layer2"])
        assert f.segments_decrypted == len(opened | wanted)  # 2 + 5 or 6 of ~23

        before = f.segments_decrypted
        rows = f.get_slice("layer3")[100:103]  # 3 rows of 1200 bytes: one or two segments
        assert torch.equal(rows, state["layer3"][100:103])
        entry = f._entries["layer3"]
        row = data_start + entry.begin + 100 * 1200
        assert f.segments_decrypted - before == len(_segments(row, row + 3 * 1200))
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.get_tensor("layer1")


def test_get_slice_indexes_like_the_tensor(km: KeyManager, tmp_path: Path) -> None:
    tensor = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    array = tensor.numpy()
    save_file({"x": tensor, "s": torch.tensor(4)}, tmp_path / "s.sml", manager=km, key_name=KEY)
    with safe_open(tmp_path / "s.sml", "pt", manager=km) as f:
        sl = f.get_slice("x")
        assert sl.get_shape() == [10, 6]
        assert sl.get_dtype() == "F32"
        for index in [
            slice(2, 5), slice(None), slice(1, 9, 3), slice(-3, None), slice(7, 2),
            slice(20, 30), 0, -1, (slice(2, 4), 3), (slice(0, 10, 2), slice(1, 3)),
            (5, slice(None, None, 2)), Ellipsis, (Ellipsis, 1), (),
        ]:  # fmt: skip
            assert torch.equal(sl[index], tensor[index]), index
        assert torch.equal(f.get_slice("s")[()], torch.tensor(4))
        with pytest.raises(IndexError, match="out of range"):
            sl[10]
        # What safetensors' own slices take too: numpy ints, 0-d tensors, None, lists.
        for index in [np.int64(2), torch.tensor(1), None, [0, 2], (np.int32(-1), 2)]:
            assert torch.equal(sl[index], tensor[index]), index
        with pytest.raises(ValueError, match="positive step"):
            sl[::-1]
        with pytest.raises(KeyError, match="no tensor named 'y'"):
            f.get_slice("y")
    with safe_open(tmp_path / "s.sml", "np", manager=km) as f:
        assert np.array_equal(f.get_slice("x")[3:7, 2], array[3:7, 2])
        assert np.array_equal(f.get_slice("x")[1:8:2], array[1:8:2])


def test_a_tampered_segment_fails_only_its_tensor(
    km: KeyManager, big: tuple[Path, dict[str, Any]]
) -> None:
    path, state = big
    with safe_open(path, "pt", manager=km) as f:
        data_start, entry = f._data_start, f._entries["layer3"]
        segments = sorted(_segments(data_start + entry.begin, data_start + entry.end))
        clean = _segments(
            data_start + f._entries["layer1"].begin, data_start + f._entries["layer1"].end
        )
    victim = segments[1]  # wholly inside layer3
    assert victim not in clean
    blob = bytearray(path.read_bytes())
    plain_size = data_start + 5 * 300_000
    count = -(-plain_size // SEGMENT)
    body_start = len(blob) - plain_size - count * TAG_BYTES
    blob[body_start + victim * (SEGMENT + TAG_BYTES) + 100] ^= 1
    path.write_bytes(bytes(blob))
    with safe_open(path, "pt", manager=km) as f:
        assert torch.equal(f.get_tensor("layer1"), state["layer1"])
        with pytest.raises(InvalidCiphertextError, match=f"segment {victim} of {count}"):
            f.get_tensor("layer3")
        assert torch.equal(f.get_slice("layer3")[:2], state["layer3"][:2])  # before it
    with pytest.raises(InvalidCiphertextError):
        load_file(path, manager=km)


def test_the_wrong_aad_fails_at_open(km: KeyManager, tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "a.sml", manager=km, key_name=KEY, aad=b"run-1")
    assert torch.equal(load_file(tmp_path / "a.sml", manager=km, aad=b"run-1")["a"], torch.ones(2))
    with pytest.raises(InvalidCiphertextError):
        load_file(tmp_path / "a.sml", manager=km, aad=b"run-2")
    with pytest.raises(InvalidCiphertextError):
        safe_open(tmp_path / "a.sml", "pt", manager=km)


def test_file_objects_both_ways(km: KeyManager, tmp_path: Path) -> None:
    with (tmp_path / "f.sml").open("wb") as out:
        save_file({"a": torch.arange(5)}, out, manager=km, key_name=KEY)
    with (tmp_path / "f.sml").open("rb") as source, safe_open(source, "pt", manager=km) as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(5))
        assert not source.closed  # the caller's file stays the caller's


# -- hostile headers -----------------------------------------------------------------------


def _file(header: Any, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


SECRET = b"\xa5SECRET-BYTES\xa5"  # tensor bytes: never in a message

HOSTILE = {
    "short": (b"\x01\x00\x00", "fewer than the header's length"),
    "huge length": (struct.pack("<Q", 100_000_001) + b"{}", "over 100000000"),
    "length past the end": (struct.pack("<Q", 4096) + b"{}" + SECRET, "in a file of"),
    "not an object": (_file(None, raw=b"[1, 2]"), "does not start with '{'"),
    "not utf-8": (_file(None, raw=b'{"\xff": 1}'), "not UTF-8"),
    "not json": (_file(None, raw=b'{"a": '), "not JSON"),
    "deep": (_file(None, raw=b'{"a":' + b"[" * 200_000), "not JSON"),
    "repeated name": (
        _file(None, SECRET[:8], raw=b'{"a":' + json.dumps(_entry()).encode() + b',"a":{}}'),
        "names 'a' twice",
    ),
    "NaN": (_file(None, raw=b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}'), "NaN"),
    "unknown dtype": (_file({"a": _entry("F4")}, SECRET[:8]), "unsupported dtype 'F4'"),
    "entry not an object": (_file({"a": [1, 2]}), "not an object of dtype"),
    "a field missing": (_file({"a": {"dtype": "F32", "shape": [2]}}), "not an object of dtype"),
    "negative dim": (_file({"a": _entry(shape=[-2])}, SECRET[:8]), "non-negative integers"),
    "float dim": (_file({"a": _entry(shape=[2.0])}, SECRET[:8]), "non-negative integers"),
    "bool dim": (_file({"a": _entry(shape=[True, 2])}, SECRET[:8]), "non-negative integers"),
    "shape not a list": (_file({"a": _entry(shape="2")}, SECRET[:8]), "non-negative integers"),
    "negative zero": (  # json.loads gives 0; serde_json (safetensors) -0.0, no size
        _file(None, raw=b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'),
        "non-negative integers",
    ),
    "negative zero offset": (
        _file(None, raw=b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[-0,0]}}'),
        "two non-negative integers",
    ),
    "lone surrogate": (  # json.loads makes a str no UTF-8 can hold; serde_json refuses
        _file(None, SECRET[:8], raw=b'{"\\ud800":' + json.dumps(_entry()).encode() + b"}"),
        "unpaired surrogate",
    ),
    "lone surrogate in metadata": (
        _file(None, raw=b'{"__metadata__":{"k":"\\udfff"}}'),
        "unpaired surrogate",
    ),
    "enormous shape": (
        _file({"a": _entry(shape=[0, 2**40, 2**40], offsets=[0, 0])}),
        "is too large",
    ),
    "three offsets": (_file({"a": _entry(offsets=[0, 4, 8])}, SECRET[:8]), "two non-negative"),
    "reversed offsets": (_file({"a": _entry(offsets=[8, 0])}, SECRET[:8]), "do not match"),
    "offsets not the shape's": (_file({"a": _entry(offsets=[0, 4])}, SECRET[:4]), "do not match"),
    "past the data": (_file({"a": _entry(offsets=[0, 8])}, SECRET[:4]), "take 8 bytes of the 4"),
    "short of the data": (_file({"a": _entry()}, SECRET), f"take 8 bytes of the {len(SECRET)}"),
    "overlap": (
        _file({"a": _entry(), "b": _entry(offsets=[4, 12])}, SECRET[:12]),
        "data_offsets of tensor 'b' overlap another",
    ),
    "gap": (_file({"a": _entry(offsets=[4, 12])}, SECRET[:12]), "leave a gap"),
    "metadata not strings": (_file({"__metadata__": {"a": 1}}), "not an object of strings"),
    "metadata not an object": (_file({"__metadata__": "x"}), "not an object of strings"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_crafted_header_is_refused(km: KeyManager, tmp_path: Path, case: str) -> None:
    plain, expected = HOSTILE[case]
    _write_plain(km, tmp_path / "h.sml", plain)
    for attempt in (
        lambda: safe_open(tmp_path / "h.sml", "pt", manager=km),
        lambda: load_file(tmp_path / "h.sml", manager=km, framework="np"),
    ):
        with pytest.raises(ValueError, match="not a safetensors file") as caught:
            attempt()
        message = str(caught.value)
        assert expected in message
        assert "SECRET" not in message
        assert len(message) < 300


def test_a_bool_tensor_with_other_bytes_is_refused(km: KeyManager, tmp_path: Path) -> None:
    plain = _file({"ok": _entry("U8", [2], [0, 2]), "b": _entry("BOOL", [3], [2, 5])})
    _write_plain(km, tmp_path / "b.sml", plain + b"\x07\x08\x00\x02\x01")
    with safe_open(tmp_path / "b.sml", "pt", manager=km) as f:
        assert f.get_tensor("ok").tolist() == [7, 8]
        with pytest.raises(ValueError, match="BOOL tensor 'b' holds bytes other than 0 and 1"):
            f.get_tensor("b")


def test_a_long_crafted_name_is_cut_short_in_messages(km: KeyManager, tmp_path: Path) -> None:
    name = "n" * 10_000
    _write_plain(km, tmp_path / "n.sml", _file({name: _entry("X")}))
    with pytest.raises(ValueError, match="not a safetensors file") as caught:
        safe_open(tmp_path / "n.sml", "pt", manager=km)
    assert len(str(caught.value)) < 300


def test_a_dtype_the_framework_lacks(km: KeyManager, tmp_path: Path) -> None:
    save_file(
        {"b": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "b.sml", manager=km, key_name=KEY
    )
    with pytest.raises(ValueError, match="'b' is BF16, which numpy has no dtype for"):
        load_file(tmp_path / "b.sml", manager=km, framework="np")


# -- refusals when saving and opening ------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "metadata", "error", "match"),
    [
        ({1: torch.ones(1)}, None, TypeError, "names must be str, not int"),
        ({"__metadata__": torch.ones(1)}, None, ValueError, "cannot be named '__metadata__'"),
        ({"a": [1.0, 2.0]}, None, TypeError, "'a' is a list: save torch tensors or numpy"),
        ({"a": torch.ones(2, 2).t()}, None, ValueError, r"'a' is not contiguous: .*contiguous\(\)"),
        ({"a": torch.eye(2).to_sparse()}, None, ValueError, r"'a' is sparse: .*to_dense\(\)"),
        ({"a": torch.ones(2, device="meta")}, None, ValueError, "'a' is on the meta device"),
        ({"a": torch.ones(2, dtype=torch.complex128)}, None, TypeError, "complex128, which"),
        ({"a": np.array(["x"])}, None, TypeError, "'a' is <U1, which safetensors cannot"),
        ({"a": np.ones(2, dtype=object)}, None, TypeError, "'a' is object, which"),
        ({"a": torch.ones(1)}, {"epoch": 3}, TypeError, "must be str, not int .at 'epoch'"),
        ({"a": torch.ones(1)}, {1: "x"}, TypeError, "must be str, not int"),
        ({"a": torch.ones(1)}, [("k", "v")], TypeError, "metadata must be a mapping"),
        ([torch.ones(1)], None, TypeError, "tensors must be a mapping"),
    ],
)
def test_save_refuses_clearly(
    km: KeyManager, tmp_path: Path, *, tensors: Any, metadata: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        save_file(tensors, tmp_path / "r.sml", manager=km, key_name=KEY, metadata=metadata)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_an_unknown_framework_or_a_numpy_device(km: KeyManager, tmp_path: Path) -> None:
    save_file({"a": torch.ones(1)}, tmp_path / "a.sml", manager=km, key_name=KEY)
    with pytest.raises(ValueError, match=r"framework must be 'pt'.*not 'tf'"):
        safe_open(tmp_path / "a.sml", "tf", manager=km)
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        load_file(tmp_path / "a.sml", manager=km, framework="np", device="cuda")
    with safe_open(tmp_path / "a.sml", "pt", manager=km) as f, pytest.raises(KeyError, match="'b'"):
        f.get_tensor("b")


def test_a_big_endian_machine_is_refused(
    km: KeyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file({"a": torch.ones(1)}, tmp_path / "a.sml", manager=km, key_name=KEY)
    monkeypatch.setattr(sys, "byteorder", "big")
    with pytest.raises(RuntimeError, match="little-endian"):
        save_file({"a": torch.ones(1)}, tmp_path / "b.sml", manager=km, key_name=KEY)
    with pytest.raises(RuntimeError, match="little-endian"):
        load_file(tmp_path / "a.sml", manager=km)


def test_a_name_given_twice_is_refused_before_anything_is_written(
    km: KeyManager, tmp_path: Path
) -> None:
    class Twice(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            return [("a", torch.ones(1)), ("a", torch.zeros(1))]

    class Name(str):
        __hash__ = object.__hash__  # equal text, yet two keys of one dict

        def __eq__(self, other: object) -> bool:
            return self is other

    for tensors in (Twice(), {"w": torch.ones(1), Name("w"): torch.zeros(1)}):
        assert len(list(tensors.items())) == 2
        with pytest.raises(ValueError, match="given twice"):
            save_file(tensors, tmp_path / "t.sml", manager=km, key_name=KEY)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_headers_error_carries_none_of_its_text(km: KeyManager, tmp_path: Path) -> None:
    header = b'{"__metadata__":{"owner":"TOP-SECRET-PROJECT"},}'
    for raw in (header, b"{\xff" + header):
        with km.open_encrypting(tmp_path / "h.sml", KEY) as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
        with pytest.raises(ValueError, match="not a safetensors file") as caught:
            safe_open(tmp_path / "h.sml", "pt", manager=km)
        seen: list[str] = []
        todo: list[BaseException] = [caught.value]
        while todo:
            exc = todo.pop()
            seen.append(repr(exc.args) + repr(vars(exc)) + repr(getattr(exc, "doc", "")))
            todo += [e for e in (exc.__context__, exc.__cause__) if e is not None]
        assert "TOP-SECRET" not in "".join(seen)


# -- the review's findings -----------------------------------------------------------------


def _storage_bytes(value: Any) -> int:
    """The bytes of the memory ``value`` holds on to (its whole buffer, not its view)."""
    if isinstance(value, np.ndarray):
        while isinstance(value.base, np.ndarray):
            value = value.base
        return memoryview(value.base).nbytes if value.base is not None else value.nbytes
    return int(value.untyped_storage().nbytes())


def test_a_strided_slice_reads_and_keeps_only_its_rows(km: KeyManager, tmp_path: Path) -> None:
    embed = torch.randn(1000, 1000)  # rows of 4000 bytes, 4 MB in 64 KiB segments
    flat = torch.arange(400_000, dtype=torch.int32)  # rows of 4 bytes
    empty_rows = torch.zeros(50, 0)
    path = tmp_path / "e.sml"
    save_file(
        {"embed": embed, "flat": flat, "none": empty_rows},
        path,
        manager=km,
        key_name=KEY,
        segment_size=SEGMENT,
    )
    with safe_open(path, "pt", manager=km) as f:
        sl = f.get_slice("embed")
        before = f.segments_decrypted
        rows = sl[::100]  # 10 rows 400 KB apart: each its own read
        assert torch.equal(rows, embed[::100])
        assert _storage_bytes(rows) == rows.nbytes  # no span of 3.6 MB pinned behind it
        assert f.segments_decrypted - before <= 2 * 10  # not the span's ~55 segments
        for index in [
            slice(3, 998, 7), slice(1, None, 2), slice(5, 6, 9), slice(990, 2000, 20),
            slice(4, 4, 3), (slice(0, None, 50), 7), (slice(2, 900, 3), slice(10, 12)),
            (slice(0, 40), 3), (slice(None, None, 333), Ellipsis, None),
        ]:  # fmt: skip
            got = sl[index]
            assert torch.equal(got, embed[index]), index
            assert _storage_bytes(got) <= 2 * max(got.nbytes, 1), index
        dense = f.get_slice("flat")[1::3]  # tiny rows close together: read in windows
        assert torch.equal(dense, flat[1::3])
        assert _storage_bytes(dense) == dense.nbytes
        assert torch.equal(f.get_slice("none")[::7], empty_rows[::7])
    with safe_open(path, "np", manager=km) as f:
        got = f.get_slice("flat")[7::5]
        assert np.array_equal(got, flat.numpy()[7::5])
        assert _storage_bytes(got) == got.nbytes
        column = f.get_slice("embed")[::9, 4]
        assert np.array_equal(column, embed.numpy()[::9, 4])
        assert _storage_bytes(column) == column.nbytes


def test_get_slice_takes_the_first_index_safetensors_takes(km: KeyManager, tmp_path: Path) -> None:
    w = torch.arange(12.0).reshape(4, 3)
    save_file({"w": w}, tmp_path / "w.sml", manager=km, key_name=KEY)
    km.decrypt_file(tmp_path / "w.sml", tmp_path / "w.safetensors")
    indices = [
        np.int64(2), np.int32(-1), np.uint8(3), np.array(2), torch.tensor(1),
        torch.tensor(-2, dtype=torch.int16), torch.tensor(1, dtype=torch.uint8),
        torch.tensor(True), torch.tensor([1]), torch.tensor([0, 2]),
        torch.tensor([True, False, True, False]), np.array([0, 2]), np.array([1]), None,
        True, False, [0, 2], [True, False, True, False], (None, 1), (np.int64(1), slice(0, 2)),
        ([0, 1], [1, 2]), (torch.tensor(3), Ellipsis), (Ellipsis, None),
    ]  # fmt: skip
    with (
        safe_open(tmp_path / "w.sml", "pt", manager=km) as f,
        st_torch.safe_open(tmp_path / "w.safetensors", "pt") as g,
    ):
        mine, theirs = f.get_slice("w"), g.get_slice("w")
        for index in indices:
            expected = theirs[index]
            got = mine[index]
            assert got.shape == expected.shape, index
            assert torch.equal(got, expected), index
        for bad in [1.0, np.True_, torch.tensor(1.0)]:  # refused as torch refuses them
            with pytest.raises(IndexError):
                theirs[bad]
            with pytest.raises(IndexError):
                mine[bad]


def _texts(exc: BaseException) -> str:
    """Everything reachable from ``exc``: its chain, args, attributes and the locals of
    the frames past the first (the test's own)."""
    found, todo, seen = [], [exc], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(repr(current.args) + repr(vars(current)))
        for attr in dir(current):
            if not attr.startswith("__"):
                found.append(repr(getattr(current, attr, None)))
        tb = current.__traceback__
        tb = tb.tb_next if tb is not None and current is exc else tb
        while tb is not None:
            found.append(repr(tb.tb_frame.f_locals))
            tb = tb.tb_next
        todo += [e for e in (current.__context__, current.__cause__) if e is not None]
    return "".join(found)


def test_no_error_carries_the_headers_text(km: KeyManager, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid Unicode") as caught:  # saving
        save_file(
            {"w\ud800": torch.ones(1)},
            tmp_path / "s.sml",
            manager=km,
            key_name=KEY,
            metadata={"owner": "TOP-SECRET-PROJECT"},
        )
    assert "TOP-SECRET" not in _texts(caught.value)
    assert not list(tmp_path.iterdir())
    for raw in (
        b'{"__metadata__":{"owner":"TOP-SECRET-PROJECT"},}',
        b'{"__metadata__":{"owner":"TOP-SECRET-PROJECT\xff"}}',
        b'{"__metadata__":{"owner":"TOP-SECRET-PROJECT"},"a":{},"a":{}}',
        b'{"__metadata__":{"owner":"TOP-SECRET-PROJECT"},"a":NaN}',
    ):
        _write_plain(km, tmp_path / "h.sml", struct.pack("<Q", len(raw)) + raw)
        with pytest.raises(ValueError, match="not a safetensors file") as caught:
            safe_open(tmp_path / "h.sml", "pt", manager=km)
        assert "TOP-SECRET" not in _texts(caught.value), raw


def test_a_metadata_key_given_twice_is_refused(km: KeyManager, tmp_path: Path) -> None:
    class Twice(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            return [("k", "1"), ("k", "2")]

    class Key(str):
        __hash__ = object.__hash__

        def __eq__(self, other: object) -> bool:
            return self is other

        def __str__(self) -> str:
            return "not the text"

    for metadata in (Twice(), {"k": "1", Key("k"): "2"}):
        with pytest.raises(ValueError, match="metadata key 'k' is given twice"):
            save_file({"a": torch.ones(1)}, tmp_path / "m.sml", manager=km, key_name=KEY,
                      metadata=metadata)  # fmt: skip
    assert not list(tmp_path.iterdir())
    save_file({Key("a"): torch.ones(1)}, tmp_path / "m.sml", manager=km, key_name=KEY,
              metadata={Key("k"): Key("v")})  # fmt: skip
    with safe_open(tmp_path / "m.sml", "pt", manager=km) as f:  # the text, not __str__'s
        assert f.keys() == ["a"]
        assert f.metadata() == {"k": "v"}


def test_the_device_is_checked_before_anything_is_decrypted(
    km: KeyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file({"w": torch.ones(3)}, tmp_path / "w.sml", manager=km, key_name=KEY)
    opened: list[object] = []
    real = km.open_encrypted

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(km, "open_encrypted", counted)
    bad = [("nope", "not a torch device"), (3.5, "not a torch device"), ("meta", "'meta' holds")]
    if not torch.cuda.is_available():
        bad.append(("cuda", "'cuda' cannot be used here"))
    for device, match in bad:
        with pytest.raises(ValueError, match=match) as caught:
            safe_open(tmp_path / "w.sml", "pt", manager=km, device=device)
        assert "\n" not in str(caught.value)
        assert len(str(caught.value)) < 200
        with pytest.raises(ValueError, match=match):
            load_file(tmp_path / "w.sml", manager=km, device=device)
    assert opened == []
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        back = load_file(tmp_path / "w.sml", manager=km, device=device)
        assert torch.equal(back["w"], torch.ones(3))
    assert len(opened) == 3


def test_a_tensor_changed_while_saved_is_refused(km: KeyManager, tmp_path: Path) -> None:
    class Hooked(io.BytesIO):  # runs `hook` when the first ciphertext is written
        hook: Any = None

        def write(self, data: Any) -> int:
            if self.hook is not None:
                self.hook, hook = None, self.hook
                hook()
            return super().write(data)

    t = torch.zeros(10)
    a = np.zeros(10, dtype=np.float32)

    def torch_dtype() -> None:
        t.data = torch.zeros(10, dtype=torch.int32)

    def torch_shape() -> None:
        t.data = torch.zeros(2, 5)

    def numpy_dtype() -> None:
        a.dtype = np.int32

    def numpy_shape() -> None:
        a.shape = (5, 2)

    for change in (torch_dtype, torch_shape, numpy_dtype, numpy_shape):
        t.data, a.dtype, a.shape = torch.zeros(10), np.float32, (10,)  # as planned
        value = t if change.__name__.startswith("torch") else a
        out = Hooked()
        out.hook = change
        with pytest.raises(RuntimeError, match="'b' changed while it was saved"):
            save_file({"a": torch.zeros(100_000), "b": value}, out, manager=km, key_name=KEY,
                      segment_size=SEGMENT)  # fmt: skip


def test_parsing_matches_safetensors(km: KeyManager, tmp_path: Path) -> None:
    """Where json.loads and serde_json differ, or our checks did: what safetensors
    accepts loads, what it refuses is refused."""
    cases = {
        "metadata null": (b'{"__metadata__":null,"a":' + json.dumps(_entry()).encode() + b"}"),
        "extra keys": json.dumps({"a": {**_entry(), "x": [1, {"y": None}], "z": "w"}}).encode(),
        "a paired surrogate": b'{"\\ud83d\\ude00":' + json.dumps(_entry()).encode() + b"}",
        "a backslash then ud800": b'{"\\\\ud800":' + json.dumps(_entry()).encode() + b"}",
        "a name with -0 in it": b'{"x-0":' + json.dumps(_entry()).encode() + b"}",
        "lone surrogate": b'{"\\ud800":' + json.dumps(_entry()).encode() + b"}",
        "negative zero": b'{"a":{"dtype":"F32","shape":[-0, 2],"data_offsets":[0,0]}}',
    }
    for case, text in cases.items():
        header = text + b" " * (-len(text) % 8)
        plain = struct.pack("<Q", len(header)) + header + SECRET[:8]
        if case == "negative zero":
            plain = plain[:-8]
        try:
            expected = {k: v.shape for k, v in st_torch.load(plain).items()}
        except Exception:
            expected = None
        _write_plain(km, tmp_path / "p.sml", plain)
        if expected is None:
            with pytest.raises(ValueError, match="not a safetensors file"):
                load_file(tmp_path / "p.sml", manager=km)
        else:
            got = {k: v.shape for k, v in load_file(tmp_path / "p.sml", manager=km).items()}
            assert got == expected, case
    assert expected is None  # the last two are refused by both


def test_shapes_numpy_cannot_make_fail_clearly(km: KeyManager, tmp_path: Path) -> None:
    many = _file({"t": _entry("U8", [1] * 100, [0, 1])}, b"\x07")
    wide = _file({"t": _entry("F32", [2**62, 0], [0, 0])})
    for plain, shape in ((many, (1,) * 100), (wide, (2**62, 0))):
        _write_plain(km, tmp_path / "s.sml", plain)
        assert load_file(tmp_path / "s.sml", manager=km)["t"].shape == shape  # torch can
        with pytest.raises(ValueError, match="'t' has a shape numpy cannot make") as caught:
            load_file(tmp_path / "s.sml", manager=km, framework="np")
        assert "framework='pt'" in str(caught.value)
        assert len(str(caught.value)) < 300


def test_a_shape_of_many_large_dimensions_is_refused_at_once(
    km: KeyManager, tmp_path: Path
) -> None:
    header = json.dumps({"t": _entry("U8", [2**62] * 60_000, [0, 0])}).encode()
    _write_plain(km, tmp_path / "d.sml", _file(None, raw=header))
    started = time.monotonic()
    with pytest.raises(ValueError, match="'t' is too large"):
        safe_open(tmp_path / "d.sml", "pt", manager=km)
    assert time.monotonic() - started < 5  # not a product of 60,000 factors of 2**62
