"""Serializers and the signed envelope that stores which move bytes put around their values.

A :class:`Serializer` turns a record (a tuple holding the user's object) into bytes and back;
:class:`PickleSerializer` (highest protocol) is the default. An :class:`Envelope` frames the
serialized bytes and, given a ``secret``, signs them with HMAC-SHA256 over the backend key and
the payload, so that a value which was tampered with, forged, or copied from another key is
rejected *before* it is deserialized.

Frame layout (version 1)::

    b"sp\\x00" + payload                        unsigned
    b"sp\\x01" + hmac_sha256(secret, key + b"\\x00" + payload) + payload     signed
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "HEADER",
    "SIGNED",
    "UNSIGNED",
    "BadValueError",
    "Envelope",
    "PickleSerializer",
    "Serializer",
]

UNSIGNED = b"sp\x00"
SIGNED = b"sp\x01"
HEADER = len(UNSIGNED)
_TAG = hashlib.sha256().digest_size


@runtime_checkable
class Serializer(Protocol):
    """Turns records into bytes and back (``pickle``-like: ``dumps``/``loads``).

    A record is a tuple of ints, floats, ``None``, strings, tuples of strings and the user's
    object; a serializer must give back an equal tuple (a list is accepted too). The ``pickle``
    module itself is a valid serializer.
    """

    def dumps(self, obj: Any, /) -> bytes:
        """Serialize ``obj``."""
        ...

    def loads(self, data: bytes, /) -> Any:
        """Deserialize what :meth:`dumps` produced."""
        ...


class PickleSerializer:
    """``pickle`` at a fixed protocol (default: the highest this Python supports)."""

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"PickleSerializer(protocol={self.protocol})"

    def dumps(self, obj: Any, /) -> bytes:
        """Pickle ``obj`` at :attr:`protocol`."""
        return pickle.dumps(obj, protocol=self.protocol)

    def loads(self, data: bytes, /) -> Any:
        """Unpickle ``data``."""
        return pickle.loads(data)


class BadValueError(Exception):
    """A stored value is not a frame this envelope accepts (the reason is the message)."""


class Envelope:
    """Frames serialized values and, with a ``secret``, signs and verifies them.

    With a secret, :meth:`unpack` refuses unsigned values and values whose signature does not
    verify, without deserializing them; the signature covers the backend key, so a valid value
    copied to another key is refused too. Without a secret, signed values are refused (they
    cannot be checked) and unsigned ones are deserialized as they are.
    """

    def __init__(self, serializer: Serializer, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if secret is not None and not secret:
            msg = "secret must not be empty"
            raise ValueError(msg)
        self.serializer = serializer
        self._secret = secret

    @property
    def signed(self) -> bool:
        """Whether values are signed (a secret was given)."""
        return self._secret is not None

    def _tag(self, key: bytes, payload: bytes) -> bytes:
        assert self._secret is not None
        return hmac.new(self._secret, key + b"\x00" + payload, hashlib.sha256).digest()

    def pack(self, key: bytes, obj: Any) -> bytes:
        """Serialize ``obj`` into a frame for ``key`` (signed when there is a secret)."""
        payload = self.serializer.dumps(obj)
        if self._secret is None:
            return UNSIGNED + payload
        return SIGNED + self._tag(key, payload) + payload

    def unpack(self, key: bytes, data: bytes) -> Any:
        """Verify and deserialize a frame read at ``key``; :class:`BadValueError` if refused.

        Errors raised by the serializer itself propagate unchanged.
        """
        header = data[:HEADER]
        if self._secret is None:
            if header == UNSIGNED:
                return self.serializer.loads(data[HEADER:])
            if header == SIGNED:
                msg = "the value is signed but this store has no secret to verify it"
                raise BadValueError(msg)
        elif header == SIGNED:
            tag = data[HEADER : HEADER + _TAG]
            payload = data[HEADER + _TAG :]
            if not hmac.compare_digest(tag, self._tag(key, payload)):
                msg = "the signature does not verify (tampered, forged or moved value)"
                raise BadValueError(msg)
            return self.serializer.loads(payload)
        elif header == UNSIGNED:
            msg = "the value is not signed but this store requires signatures"
            raise BadValueError(msg)
        msg = "not a stockpyle value (unknown header)"
        raise BadValueError(msg)
