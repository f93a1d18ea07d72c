"""Open Inference Protocol v2 bodies: the JSON schema, the binary tensor extension, the answer.

A request body is JSON, or (binary extension) a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw tensors of the inputs that say `"parameters": {"binary_data_size": n}`,
in input order, little-endian and row-major. An output comes back as binary when its request
entry says `"parameters": {"binary_data": true}`, or when the request says
`"binary_data_output": true` and the output does not say otherwise; the answer is then the JSON
header followed by those outputs' bytes, with the same header naming the JSON length. `BYTES`
elements are each a 4-byte little-endian length then the UTF-8 bytes, as Triton does.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from ..errors import invalid_input
from ..schemas import NESTED_NUMBERS, FocusItem

HEADER_LENGTH = "inference-header-content-length"
_MAX_VALUES = 50_000_000
Scalar = str | int | float | bool

# The numeric OIP datatypes and their little-endian numpy types. `BYTES` and `BF16` are legal
# in the protocol but are no input of a vision model (and numpy has no bfloat16).
DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


class InferTensor(BaseModel):
    """One input tensor: `data` as JSON, or `parameters.binary_data_size` bytes after the header."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Datatype
    data: list[Any] | None = Field(None, json_schema_extra={"items": NESTED_NUMBERS})
    parameters: dict[str, Scalar] | None = None


class InferParameters(BaseModel):
    """Request parameters: ours (`tier`, `focus`, `top_k`) and the protocol's own; others are
    ignored, as OIP clients send parameters of their own (`priority`, `timeout`, ...)."""

    model_config = ConfigDict(extra="ignore")

    tier: str | None = None
    focus: list[FocusItem] = Field(default_factory=list)
    top_k: int | None = Field(None, ge=1, le=1000)
    binary_data_output: bool = False

    @field_validator("focus", mode="before")
    @classmethod
    def _focus_as_json(cls, value: Any) -> Any:
        # OIP parameters are scalars, so clients that hold to it send focus as a JSON string.
        if isinstance(value, str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError("has to be a list of focus entries, or the list as JSON") from None
        return value


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    parameters: dict[str, Scalar] | None = None


class InferRequest(BaseModel):
    """`POST /v2/models/{name}/infer`. `model_name` and `model_version` are accepted (KServe's
    client sends them) and must match the route when given."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str | None = Field(None, max_length=256)
    model_name: str | None = Field(None, max_length=256)
    model_version: str | None = Field(None, max_length=64)
    inputs: list[InferTensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(None, max_length=16)
    parameters: InferParameters | None = None


@dataclass(frozen=True)
class ParsedInfer:
    body: InferRequest
    items: list[np.ndarray] | list[bytes]
    """One array per item of the batch (the first axis of the input's shape), or one encoded
    image per item for a `BYTES` input."""


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip, deflate), at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMedia(
            f"`Content-Encoding`: {encoding!r} is not supported; use gzip, deflate or none",
            "Content-Encoding",
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except (zlib.error, gzip.BadGzipFile):
        raise InvalidInput(
            f"body is not valid {encoding} data (Content-Encoding: {encoding})", "body"
        ) from None
    if len(out) > limit:
        raise PayloadTooLarge(f"request body is over {limit} bytes once decompressed", "body")
    return out


def parse_infer(raw: bytes, header_length: str | None) -> ParsedInfer:
    """Validate a JSON or binary-extension body; errors name the field or the header."""
    if not raw:
        raise InvalidInput("body is empty; send an inference request", "body")
    json_part, binary = _split(raw, header_length)
    try:
        body = InferRequest.model_validate_json(json_part)
    except ValidationError as exc:
        errors = list(exc.errors(include_url=False))
        if header_length is None and errors and errors[0].get("type") == "json_invalid":
            _refuse_headerless_binary(raw)
        raise invalid_input(errors) from None
    tensor = body.inputs[0]
    size = (tensor.parameters or {}).get("binary_data_size")
    if tensor.datatype == "BYTES":
        return ParsedInfer(body, image_items(tensor, size, binary))
    if size is None:
        if binary:
            raise InvalidInput(
                f"body: {len(binary)} bytes follow the JSON header, but no input has "
                "`parameters.binary_data_size`",
                "inputs[0].parameters.binary_data_size",
            )
        return ParsedInfer(body, _json_items(tensor))
    return ParsedInfer(body, _binary_items(tensor, size, binary))


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(raw):
        raise InvalidInput(
            f"`Inference-Header-Content-Length`: has to be the length of the JSON header, "
            f"between 1 and the body's {len(raw)} bytes, but is {header_length!r}",
            "Inference-Header-Content-Length",
        )
    n = int(text)
    return raw[:n], raw[n:]


def _refuse_headerless_binary(raw: bytes) -> None:
    """Raw tensor bytes after a JSON header, without the header that says where it ends."""
    if b"binary_data_size" in raw[:65536]:
        raise InvalidInput(
            "binary tensor data needs the `Inference-Header-Content-Length` header "
            "(the length of the JSON part of the body)",
            "Inference-Header-Content-Length",
        )


def image_items(tensor: InferTensor, size: Scalar | None, binary: bytes) -> list[bytes]:
    """A `BYTES` input of shape [N] (or [N, 1]): one encoded image (PNG/JPEG) per item, as
    base64 strings in `data`, or as binary data where each element is a 4-byte little-endian
    length and that many bytes (the protocol's binary `BYTES` layout)."""
    shape = tensor.shape
    if not (1 <= len(shape) <= 2 and shape[0] >= 1 and (len(shape) == 1 or shape[1] == 1)):
        raise InvalidInput(
            f"`inputs[0].shape`: {shape} is not [N] (one encoded image per item)",
            "inputs[0].shape",
        )
    count = shape[0]
    if size is None:
        data = tensor.data
        if not isinstance(data, list) or len(data) != count:
            raise InvalidInput(
                f"`inputs[0].data`: send {count} base64 strings, one encoded image each",
                "inputs[0].data",
            )
        images = []
        for i, value in enumerate(data):
            try:
                if not isinstance(value, str):
                    raise ValueError
                images.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                field = f"inputs[0].data[{i}]"
                raise InvalidInput(f"`{field}`: is not a base64 string", field) from None
        return images
    field = "inputs[0].parameters.binary_data_size"
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise InvalidInput(
            f"`{field}`: is {size!r}, but {len(binary)} bytes follow the JSON header", field
        )
    images, at = [], 0
    for i in range(count):
        if at + 4 > len(binary):
            raise InvalidInput(f"`{field}`: the data ends before element {i}'s length", field)
        n = int.from_bytes(binary[at : at + 4], "little")
        if at + 4 + n > len(binary):
            raise InvalidInput(f"`{field}`: element {i} runs past the data", field)
        images.append(binary[at + 4 : at + 4 + n])
        at += 4 + n
    if at != len(binary):
        raise InvalidInput(f"`{field}`: {len(binary) - at} bytes follow the last element", field)
    return images


def _check_shape(tensor: InferTensor) -> int:
    if tensor.datatype not in DTYPES:
        raise InvalidInput(
            f"`inputs[0].datatype`: {tensor.datatype} is not an input this model takes; "
            f"send one of {', '.join(DTYPES)}",
            "inputs[0].datatype",
        )
    shape = tensor.shape
    if any(d < 1 for d in shape) or math.prod(shape) > _MAX_VALUES:
        raise InvalidInput(
            f"`inputs[0].shape`: {shape} is not a valid batch shape", "inputs[0].shape"
        )
    return math.prod(shape)


def _json_items(tensor: InferTensor) -> list[np.ndarray]:
    """OIP data may be flat (row-major) or nested; one array per item of the batch."""
    count = _check_shape(tensor)
    if tensor.data is None:
        raise InvalidInput(
            "`inputs[0].data`: missing; send the values, or raw bytes after the JSON header "
            "with `parameters.binary_data_size`",
            "inputs[0].data",
        )
    try:
        arr = np.asarray(tensor.data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput("`inputs[0].data`: has to be numbers", "inputs[0].data") from None
    if arr.size != count:
        raise InvalidInput(
            f"`inputs[0].data`: holds {arr.size} values, shape {tensor.shape} needs {count}",
            "inputs[0].data",
        )
    return list(arr.reshape(tensor.shape))


def _binary_items(tensor: InferTensor, size: Scalar, binary: bytes) -> list[np.ndarray]:
    field = "inputs[0].parameters.binary_data_size"
    if tensor.data is not None:
        raise InvalidInput(
            "`inputs[0].data`: give the values as `data` or as binary data, not both",
            "inputs[0].data",
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"`{field}`: has to be a byte count, but is {size!r}", field)
    if size != len(binary):
        raise InvalidInput(
            f"`{field}`: is {size}, but {len(binary)} bytes follow the JSON header", field
        )
    count = _check_shape(tensor)
    dtype = np.dtype(DTYPES[tensor.datatype])
    if size != count * dtype.itemsize:
        raise InvalidInput(
            f"`{field}`: is {size}, but shape {tensor.shape} of {tensor.datatype} takes "
            f"{count * dtype.itemsize} bytes",
            field,
        )
    arr = np.frombuffer(binary, dtype=dtype).astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidInput("`inputs[0]`: binary data holds NaN or infinity", "inputs[0]")
    return list(arr.reshape(tensor.shape))


# Answers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


def select_outputs(
    outputs: list[OutputTensor], body: InferRequest
) -> list[tuple[OutputTensor, bool]]:
    """The outputs the request asked for, in its order (all when it names none), each with
    whether it goes back as binary."""
    default = bool(body.parameters and body.parameters.binary_data_output)
    if body.outputs is None:
        return [(o, default) for o in outputs]
    by_name = {o.name: o for o in outputs}
    chosen = []
    for i, requested in enumerate(body.outputs):
        if requested.name not in by_name:
            raise InvalidInput(
                f"`outputs[{i}].name`: {requested.name!r} is not an output of this model; "
                f"its outputs are {', '.join(by_name)}",
                f"outputs[{i}].name",
            )
        binary = (requested.parameters or {}).get("binary_data", default)
        chosen.append((by_name[requested.name], bool(binary)))
    return chosen


def _tensor_bytes(output: OutputTensor) -> bytes:
    if output.datatype == "BYTES":
        parts = []
        for value in output.data:
            encoded = str(value).encode()
            parts.append(len(encoded).to_bytes(4, "little") + encoded)
        return b"".join(parts)
    return np.asarray(output.data, dtype=np.dtype(DTYPES[output.datatype])).tobytes()


def encode_response(
    header: dict[str, Any], outputs: list[tuple[OutputTensor, bool]]
) -> tuple[bytes, int | None]:
    """The answer's bytes, and the JSON header's length when binary outputs follow it."""
    entries, blobs = [], []
    for output, binary in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if binary:
            blob = _tensor_bytes(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = output.data
        entries.append(entry)
    head = orjson.dumps({**header, "outputs": entries})
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
