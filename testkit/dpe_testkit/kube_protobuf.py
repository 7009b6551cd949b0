"""The Kubernetes protobuf encoding of the objects helm and kubectl write in it: Secrets, ConfigMaps
and Namespaces.

client-go's typed clients for the core group send `application/vnd.kubernetes.protobuf` bodies;
helm stores each release that way (a Secret by default, a ConfigMap with HELM_DRIVER=configmap),
`kubectl create namespace` and `kubectl create secret` create that way.
The API server decodes them like JSON ones, so the emulator does too: `decode` turns such a body
into the object's JSON form. Reads are answered in JSON, which the same clients accept.

The wire format: the magic `k8s\\0`, then a `runtime.Unknown` message (1: typeMeta {1: apiVersion,
2: kind}, 2: raw) whose `raw` is the object's own message. Only the fields below are read; others
(managed fields, owner references) are skipped, as an object helm writes never carries them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf object this module reads."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ProtobufError("a varint runs past the end of the message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of every field: an int for varints, bytes for length-delimited ones."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ProtobufError("a field runs past the end of the message")
            yield number, data[at:at + length]
            at += length
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ProtobufError(f"wire type {wire} is not read here")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("a string field holds a varint")
    return value.decode()


def _entry(value: int | bytes) -> tuple[str, bytes]:
    """A map entry: key 1 (string), value 2."""
    if not isinstance(value, bytes):
        raise ProtobufError("a map entry holds a varint")
    key, item = "", b""
    for number, field in _fields(value):
        if number == 1:
            key = _text(field)
        elif number == 2 and isinstance(field, bytes):
            item = field
    return key, item


def _metadata(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    names = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    maps = {11: "labels", 12: "annotations"}
    for number, value in _fields(data):
        if number in names:
            # The encoding writes empty strings, which JSON leaves out (and the server reads as unset).
            if text := _text(value):
                meta[names[number]] = text
        elif number in maps:
            key, item = _entry(value)
            meta.setdefault(maps[number], {})[key] = item.decode()
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
    return meta


Reader = Callable[[dict[str, Any], str, int | bytes], None]
"""Stores one field's value in the object under its JSON key."""


def _read_metadata(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    if isinstance(value, bytes):
        obj[key] = _metadata(value)


def _read_text(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    obj[key] = _text(value)


def _read_bool(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    obj[key] = bool(value)


def _read_text_entry(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    name, item = _entry(value)
    obj.setdefault(key, {})[name] = item.decode()


def _read_bytes_entry(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    name, item = _entry(value)
    obj.setdefault(key, {})[name] = base64.b64encode(item).decode()


def _read_namespace_spec(obj: dict[str, Any], key: str, value: int | bytes) -> None:
    finalizers = [_text(item) for field, item in _fields(value) if field == 1] if isinstance(value, bytes) else []
    if finalizers:
        obj[key] = {"finalizers": finalizers}


SCHEMAS: dict[str, dict[int, tuple[str, Reader]]] = {
    "Secret": {1: ("metadata", _read_metadata), 2: ("data", _read_bytes_entry), 3: ("type", _read_text),
               4: ("stringData", _read_text_entry), 5: ("immutable", _read_bool)},
    "ConfigMap": {1: ("metadata", _read_metadata), 2: ("data", _read_text_entry), 3: ("binaryData", _read_bytes_entry),
                  4: ("immutable", _read_bool)},
    "Namespace": {1: ("metadata", _read_metadata), 2: ("spec", _read_namespace_spec)},
}
"""Per kind, the fields read: field number -> (JSON key, reader)."""


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of one of the kinds in `SCHEMAS`; ProtobufError for anything else."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf magic")
    kind, raw = "", b""
    for number, value in _fields(body[len(MAGIC):]):
        if number == 1 and isinstance(value, bytes):
            kind = next((_text(v) for n, v in _fields(value) if n == 2), "")
        elif number == 2 and isinstance(value, bytes):
            raw = value
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtobufError(f"a protobuf {kind or 'object of no kind'} is not decoded here (only {', '.join(SCHEMAS)})")
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind}
    for number, value in _fields(raw):
        if number in schema:
            key, read = schema[number]
            read(obj, key, value)
    return obj
