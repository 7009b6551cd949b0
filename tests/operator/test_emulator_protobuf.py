"""The emulator reads protobuf bodies as the API server does (`dpe_testkit.kube_protobuf`): the
objects helm and kubectl send that way, built here field by field in the wire format."""

from __future__ import annotations

import pytest
from dpe_testkit import kube_protobuf


def _varint(value: int) -> bytes:
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        out += bytes([low | 0x80 if value else low])
        if not value:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(key: str, value: bytes) -> bytes:
    return _field(1, key.encode()) + _field(2, value)


def _object(kind: str, raw: bytes) -> bytes:
    return kube_protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, kind.encode())) + _field(2, raw)


def test_a_release_secret_reads_as_json_with_empty_strings_left_out() -> None:
    meta = _field(1, b"sh.helm.release.v1.dpe.v1") + _field(3, b"") + _field(11, _entry("owner", b"helm"))
    raw = _field(1, meta) + _field(2, _entry("release", b"\x00\xff")) + _field(3, b"helm.sh/release.v1") + _varint(5 << 3) + _varint(1)
    assert kube_protobuf.decode(_object("Secret", raw)) == {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sh.helm.release.v1.dpe.v1", "labels": {"owner": "helm"}},
        "data": {"release": "AP8="}, "type": "helm.sh/release.v1", "immutable": True}


def test_config_maps_and_namespaces_read_as_json() -> None:
    config_map = _field(1, _field(1, b"c")) + _field(2, _entry("a", b"x")) + _field(3, _entry("b", b"\x01"))
    assert kube_protobuf.decode(_object("ConfigMap", config_map)) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "x"}, "binaryData": {"b": "AQ=="}}
    namespace = _field(1, _field(1, b"dpe")) + _field(2, _field(1, b"kubernetes"))
    assert kube_protobuf.decode(_object("Namespace", namespace)) == {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dpe"}, "spec": {"finalizers": ["kubernetes"]}}


@pytest.mark.parametrize(("body", "message"), [
    (b"{}", "magic"),
    (_object("Pod", b""), "a protobuf Pod is not decoded here"),
    (kube_protobuf.MAGIC + b"\x0a\x05ab", "runs past the end"),
])
def test_anything_else_is_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(kube_protobuf.ProtobufError, match=message):
        kube_protobuf.decode(body)
