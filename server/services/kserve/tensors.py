"""KServe v2 tensors and parameters on the wire, as numpy arrays and Python values.

Inputs arrive either in ``raw_input_contents`` (one little-endian blob per input, what tritonclient
and perf_analyzer send) or in each input's typed ``contents``; outputs always go out in
``raw_output_contents``, one blob per output in order (tritonclient's ``as_numpy`` reads nothing
else). A BYTES element is its length as a 4-byte little-endian integer, then its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from protos.inference import kserve_pb2 as pb
from server.errors import InputError
from server.graph import Arrays

BYTES = "BYTES"
# datatype -> (numpy dtype, the ``InferTensorContents`` field, ModelConfig's DataType)
DATATYPES: dict[str, tuple[np.dtype, str, int]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents", pb.TYPE_BOOL),
    "INT32": (np.dtype("<i4"), "int_contents", pb.TYPE_INT32),
    "INT64": (np.dtype("<i8"), "int64_contents", pb.TYPE_INT64),
    "FP32": (np.dtype("<f4"), "fp32_contents", pb.TYPE_FP32),
    "FP64": (np.dtype("<f8"), "fp64_contents", pb.TYPE_FP64),
    BYTES: (np.dtype(object), "bytes_contents", pb.TYPE_STRING),
}
FROM_MANIFEST = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}  # manifest dtype -> datatype

Params = dict[str, Any]


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as ModelMetadata shows it: ``-1`` in ``shape`` is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(name=self.name, datatype=self.datatype, shape=self.shape)


def _bytes_elements(blob: bytes, field: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise InputError(f"{field}: a BYTES element's 4-byte length is cut off at byte {offset}")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise InputError(f"{field}: a BYTES element of {size} bytes runs past the end ({len(blob)} bytes)")
        elements.append(blob[offset : offset + size])
        offset += size
    return elements


def decode_inputs(request: pb.ModelInferRequest) -> Arrays:
    """Every input of ``request`` as an array of its shape (BYTES: an object array of ``bytes``)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} blobs for {len(request.inputs)} inputs")
    arrays: Arrays = {}
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}] ({tensor.name!r})"
        if tensor.name in arrays:
            raise InputError(f"{field}: the input is given twice")
        if tensor.datatype not in DATATYPES:
            raise InputError(f"{field}: datatype {tensor.datatype!r} is not one of {sorted(DATATYPES)}")
        if any(size < 0 for size in tensor.shape):
            raise InputError(f"{field}: shape {list(tensor.shape)} has a negative size")
        dtype, contents, _ = DATATYPES[tensor.datatype]
        count = int(np.prod(tensor.shape))
        if raw and tensor.datatype == BYTES:
            elements: Any = _bytes_elements(raw[index], field)
        elif raw:
            if len(raw[index]) != count * dtype.itemsize:
                raise InputError(f"{field}: shape {list(tensor.shape)} of {tensor.datatype} needs "
                                 f"{count * dtype.itemsize} bytes, raw_input_contents[{index}] has {len(raw[index])}")
            elements = np.frombuffer(raw[index], dtype=dtype)
        else:
            elements = list(getattr(tensor.contents, contents))
        if len(elements) != count:
            raise InputError(f"{field}: shape {list(tensor.shape)} holds {count} elements, {len(elements)} were sent")
        array = objects(elements) if tensor.datatype == BYTES else np.asarray(elements, dtype=dtype)
        arrays[tensor.name] = array.reshape(tuple(tensor.shape))
    return arrays


def objects(items: list[bytes]) -> np.ndarray:
    """A BYTES tensor: a 1-D object array of ``bytes`` (``np.array`` would make a fixed-width ``S`` array)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def texts(arrays: Arrays, name: str) -> list[str]:
    """The BYTES input ``name`` as UTF-8 strings, flattened."""
    if name not in arrays:
        raise InputError(f"input {name!r} is missing")
    value = arrays[name]
    if value.dtype != object:
        raise InputError(f"input {name!r} must be BYTES (UTF-8 text)")
    try:
        return [element.decode() for element in value.ravel()]
    except UnicodeDecodeError as error:
        raise InputError(f"input {name!r} is not valid UTF-8: {error}") from None


def numbers(arrays: Arrays, name: str, datatype: str) -> list[float]:
    """The numeric input ``name`` of ``datatype``, flattened."""
    if name not in arrays:
        raise InputError(f"input {name!r} is missing")
    value = arrays[name]
    if value.dtype != DATATYPES[datatype][0]:
        raise InputError(f"input {name!r} must be {datatype}")
    return value.ravel().tolist()


def encode(name: str, datatype: str, array: np.ndarray) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes]:
    """One output: its description and its raw blob."""
    if datatype == BYTES:  # an object array of bytes
        blob = b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
    else:
        blob = np.ascontiguousarray(array, dtype=DATATYPES[datatype][0]).tobytes()
    return pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape), blob


def parameters(values: Mapping[str, pb.InferParameter]) -> Params:
    """A request's parameters as Python values."""
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in values.items()
            if value.WhichOneof("parameter_choice")}


def integer(params: Params, name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"parameters[{name!r}] is {value!r}, expected an integer")
    return value


def real(params: Params, name: str, default: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"parameters[{name!r}] is {value!r}, expected a number")
    return float(value)


def flag(params: Params, name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise InputError(f"parameters[{name!r}] is {value!r}, expected a bool")
    return value
