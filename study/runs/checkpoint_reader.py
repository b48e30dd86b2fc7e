"""Read what a torch checkpoint holds without importing torch and without running any of it.

A checkpoint written by `torch.save` (zip format, the default since torch 1.6) is a zip of
`{name}/data.pkl` (the pickled object tree) and one `{name}/data/{key}` entry per storage.
`RestrictedUnpickler` rebuilds that tree from primitives only: `find_class` resolves an
explicit list of names (torch's tensor rebuild functions, storage and dtype names,
OrderedDict, torch.Size, torch.device, TorchVersion, set, bytes) to stand-ins defined here, so
a tensor becomes a `TensorInfo` (shape, dtype, stride, storage key, numel, byte size) and no
tensor bytes are read. Any other name raises `NotModelled` before anything is built.

`read_zip_checkpoint(path)` is the entry point; `study.runs.checkpoint_summary.
load_checkpoint_info` falls back to the torch loader for whatever raises NotModelled here.
The allow-list and every stand-in it may build are one module (~300 lines), read together.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length


class NotModelled(Exception):
    """The restricted reader cannot describe this file; the torch loader decides instead."""


@dataclass(frozen=True)
class DType:
    """A torch dtype by name, e.g. DType("float32", 4, "f"); `code` is a struct format or ""."""

    name: str
    itemsize: int
    code: str = ""

    def __repr__(self) -> str:
        return f"torch.{self.name}"  # what repr(torch.float32) prints


_DTYPES = {name: DType(name, size, code) for name, size, code in (
    ("float32", 4, "f"), ("float64", 8, "d"), ("float16", 2, "e"), ("bfloat16", 2, "bf16"),
    ("int64", 8, "q"), ("int32", 4, "i"), ("int16", 2, "h"), ("int8", 1, "b"), ("uint8", 1, "B"),
    ("bool", 1, "?"), ("complex64", 8, "c8"), ("complex128", 16, "c16"), ("uint16", 2, "H"),
    ("uint32", 4, "I"), ("uint64", 8, "Q"), ("complex32", 4, ""), ("float8_e5m2", 1, ""),
    ("float8_e4m3fn", 1, ""), ("float8_e5m2fnuz", 1, ""), ("float8_e4m3fnuz", 1, ""),
    ("float8_e8m0fnu", 1, ""), ("float4_e2m1fn_x2", 1, ""),
)}
# torch's legacy typed storage classes -> the dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
_UNTYPED = DType("untyped", 1)  # torch.UntypedStorage: bytes; the tensor names its dtype


@dataclass(frozen=True)
class StorageRef:
    """One `data/{key}` entry of the zip: `numel` elements of `dtype` on `location`."""

    key: str
    dtype: DType
    location: str
    numel: int


class TensorInfo:
    """A tensor described, not loaded: shape, dtype name, numel, nbytes, storage key, location.

    `values(limit)` reads only the first `limit` elements (row-major order) from the file;
    `tolist()` reads them all, for small tensors. Both return None for a dtype Python's
    struct module cannot decode (float8 and friends).
    """

    def __init__(self, *, shape: tuple[int, ...], dtype: DType, stride: tuple[int, ...],
                 offset: int, storage: StorageRef | None, reader: StorageFile | None):
        self.shape, self.dtype_info, self.stride = tuple(shape), dtype, tuple(stride)
        self.offset, self.storage, self.reader = offset, storage, reader

    @property
    def dtype(self) -> str:
        return self.dtype_info.name

    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype_info.itemsize

    @property
    def storage_key(self) -> str | None:
        return self.storage.key if self.storage else None

    @property
    def location(self) -> str:
        return self.storage.location if self.storage else "cpu"

    def values(self, limit: int) -> list | None:
        count = min(limit, self.numel())
        if count == 0:
            return []
        if self.reader is None or self.storage is None or not self.dtype_info.code:
            return None
        positions = [self.offset + sum(i * s for i, s in zip(_unravel(flat, self.shape),
                                                             self.stride, strict=True))
                     for flat in range(count)]
        return self.reader.read(self.storage.key, self.dtype_info, positions)

    def tolist(self) -> Any:
        """Like torch.Tensor.tolist(): nested lists, or a scalar for a 0-d tensor."""
        flat = self.values(self.numel())
        return None if flat is None else _nest(flat, self.shape)

    def __repr__(self) -> str:
        return f"TensorInfo(shape={list(self.shape)}, dtype={self.dtype}, key={self.storage_key})"


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    index = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        index.append(rest)
    return index[::-1]


def _nest(flat: list, shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


class StorageFile:
    """Reads a few elements of one storage entry straight from the zip (torch stores them
    uncompressed): a seek and a read per call, the central directory parsed once."""

    def __init__(self, path: str | os.PathLike, members: dict[str, zipfile.ZipInfo],
                 byteorder: str):
        self.path, self.members = os.fspath(path), members
        self.prefix = "<" if byteorder == "little" else ">"

    def read(self, key: str, dtype: DType, positions: list[int]) -> list | None:
        """The elements at `positions` (element indices) of storage `key`; None when the entry
        is missing, compressed or too short (a hand-made or damaged file)."""
        info = self.members.get(key)
        if info is None or info.compress_type != zipfile.ZIP_STORED or min(positions) < 0 \
                or (max(positions) + 1) * dtype.itemsize > info.file_size:
            return None
        with open(self.path, "rb") as handle:
            handle.seek(info.header_offset)
            _, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(30))
            start = info.header_offset + 30 + name_length + extra_length
            contiguous = positions == list(range(positions[0], positions[0] + len(positions)))
            spans = [(positions[0], len(positions))] if contiguous else [(p, 1) for p in positions]
            values: list = []
            for first, count in spans:
                handle.seek(start + first * dtype.itemsize)
                data = handle.read(count * dtype.itemsize)
                if len(data) != count * dtype.itemsize:
                    return None
                values.extend(_decode(data, dtype, self.prefix))
        return values


def _decode(data: bytes, dtype: DType, prefix: str) -> list:
    count = len(data) // dtype.itemsize
    if dtype.code == "bf16":  # the top half of a float32
        halves = struct.unpack(f"{prefix}{count}H", data)
        return list(struct.unpack(f"{prefix}{count}f", struct.pack(f"{prefix}{count}I",
                                                                    *(h << 16 for h in halves))))
    if dtype.code in ("c8", "c16"):
        parts = struct.unpack(f"{prefix}{2 * count}{'f' if dtype.code == 'c8' else 'd'}", data)
        return [complex(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]
    return list(struct.unpack(f"{prefix}{count}{dtype.code}", data))


class OrderedDictStandIn(dict):
    """collections.OrderedDict as a plain dict that accepts the `_metadata` torch attaches."""


class _TorchVersionStandIn(str):
    """torch.torch_version.TorchVersion (a str subclass) -> the plain str it holds."""

    def __new__(cls, value=""):
        return str(value)


def _latin1_bytes(text: str, encoding: str) -> bytes:  # _codecs.encode: how protocol 2 pickles bytes
    if encoding not in ("latin1", "latin-1"):
        raise NotModelled(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _device(kind: Any, index: Any = None) -> str:
    return f"{kind}:{index}" if index is not None else str(kind)


def _bytearray(data: Any = b"", *encoding: str) -> bytearray:
    if not isinstance(data, (bytes, str)):  # bytearray(10**12) would allocate a terabyte
        raise NotModelled("bytearray from something other than bytes")
    return bytearray(_latin1_bytes(data, *encoding) if isinstance(data, str) else data)


def _return_data(data: Any, *_: Any) -> Any:  # nn.Parameter(data) -> data
    return data


# Everything find_class resolves besides tensors, storages and dtypes.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDictStandIn,
    ("torch", "Size"): tuple,
    ("torch", "device"): _device,
    ("torch.torch_version", "TorchVersion"): _TorchVersionStandIn,
    ("torch._utils", "_rebuild_parameter"): _return_data,
    ("torch._utils", "_rebuild_parameter_with_state"): _return_data,
    ("builtins", "set"): set,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch's data.pkl into dicts, lists, primitives and TensorInfo; nothing else."""

    def __init__(self, file, reader: StorageFile):
        super().__init__(file)
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DTYPES[_STORAGE_DTYPES[name]]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _UNTYPED
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        raise NotModelled(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], DType)):
            raise NotModelled(f"persistent id {pid!r:.80}")
        _, dtype, key, location, numel = pid
        return StorageRef(str(key), dtype, str(location), int(numel))

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad, hooks, *rest):
        """_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]),
        _v3(..., hooks, dtype[, metadata]) -> TensorInfo."""
        if not isinstance(storage, StorageRef):
            raise NotModelled("a tensor without a storage")
        dtype = storage.dtype
        if dtype is _UNTYPED:
            dtype = rest[0] if rest and isinstance(rest[0], DType) else None
        if dtype is None or len(size) != len(stride):
            raise NotModelled("a tensor without a dtype")
        return TensorInfo(shape=tuple(size), dtype=dtype, stride=tuple(stride), offset=int(offset),
                          storage=storage, reader=self.reader)


def read_zip_checkpoint(path: str | os.PathLike) -> Any:
    """The object tree of a torch.save zip, tensors as TensorInfo. NotModelled if it is not
    one or holds anything outside the list above."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise NotModelled("no single data.pkl")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            members = {info.filename[len(prefix) + 5:]: info for info in archive.infolist()
                       if info.filename.startswith(f"{prefix}data/")}
            reader = StorageFile(path, members, byteorder)
            with archive.open(pickles[0]) as handle:
                return RestrictedUnpickler(handle, reader).load()
    except NotModelled:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, struct.error, OSError) as err:
        raise NotModelled(f"unreadable: {err}") from err


def dtype_named(name: str) -> DType | None:
    """The DType of a torch dtype name ("float32"), or None for one this module does not know."""
    return _DTYPES.get(name)
