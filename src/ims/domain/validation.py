"""Pure input rules beyond the original's schemas: OpenSSH public keys, xnames, S3 link paths, name lengths,
NUL characters and JSON nesting. Each check returns an error message, or None when the value is fine; the
server (schemas, services) and the CLI (before sending) use the same functions."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from typing import Any

# Names of records (public keys, recipes, images, job image names): a documented bound, not the original's.
NAME_MAX_LENGTH = 255
# An OpenSSH public key line: an RSA 16384-bit key is about 2.8 KiB; 16 KiB leaves room for a long comment.
PUBLIC_KEY_MAX_LENGTH = 16384
# Request bodies: JSON nested deeper than this is refused before it is parsed.
JSON_MAX_DEPTH = 32
# Integers IMS stores (sizes in GiB, list paging): a signed 32-bit bound, which every database keeps.
INT_MAX = 2**31 - 1
# Job sizes in GiB: 1 PiB is far beyond any build and far inside every integer type.
SIZE_GIB_MAX = 1048576
S3_KEY_MAX_BYTES = 1024

PUBLIC_KEY_TYPES = frozenset(
    {
        "ssh-rsa",
        "ssh-dss",
        "ssh-ed25519",
        "ssh-ed448",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "sk-ssh-ed25519@openssh.com",
        "ssh-rsa-cert-v01@openssh.com",
        "ssh-dss-cert-v01@openssh.com",
        "ssh-ed25519-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "sk-ssh-ed25519-cert-v01@openssh.com",
    }
)
_PRIVATE_MARKERS = ("PRIVATE KEY-----", "PuTTY-User-Key-File-")
_PUBLIC_HINT = "Send the one line of the public key (the .pub file, e.g. ~/.ssh/id_ed25519.pub)."


def check_public_key(text: str) -> str | None:
    """One OpenSSH public key line: `<type> <base64 blob> [comment]`, the blob's own type matching `<type>`.

    Options such as `command=` (authorized_keys syntax), several lines and private keys are refused."""
    if any(marker in text for marker in _PRIVATE_MARKERS):
        return f"public_key is a private key: never send it. {_PUBLIC_HINT}"
    if len(text) > PUBLIC_KEY_MAX_LENGTH:
        return f"public_key must be at most {PUBLIC_KEY_MAX_LENGTH} characters. {_PUBLIC_HINT}"
    line = text.strip()
    if "\n" in line or "\r" in line:
        return f"public_key must be exactly one line. {_PUBLIC_HINT}"
    parts = line.split(None, 2)
    if len(parts) < 2:
        return f"public_key is not an OpenSSH public key line (`<type> <base64> [comment]`). {_PUBLIC_HINT}"
    key_type, blob_text = parts[0], parts[1]
    if key_type not in PUBLIC_KEY_TYPES:
        if "=" in key_type or "," in key_type or key_type.lower() in {"command", "from", "restrict"}:
            return "public_key must not carry authorized_keys options (such as command=); send the key alone."
        return f"public_key has an unknown key type {key_type[:40]!r}. {_PUBLIC_HINT}"
    try:
        blob = base64.b64decode(blob_text, validate=True)
    except (binascii.Error, ValueError):
        return f"public_key's key data is not valid base64. {_PUBLIC_HINT}"
    embedded = _ssh_string(blob)
    if embedded is None:
        return f"public_key's key data is not an SSH key blob. {_PUBLIC_HINT}"
    if embedded != key_type.encode():
        return f"public_key's key data is a {embedded[:40].decode(errors='replace')!r} key, not {key_type!r}."
    return None


def _ssh_string(blob: bytes) -> bytes | None:
    """The first length-prefixed string of an SSH wire blob (the key type), or None."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length == 0 or length > 64 or len(blob) < 4 + length:
        return None
    return blob[4 : 4 + length]


_XNAME = re.compile(r"^x\d{1,4}(?:[a-z]+\d+)*$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_xname(text: str) -> str | None:
    """A remote build node: a Cray xname (x3000c0s19b4n0), a host name or an IP address."""
    message = "xname must be a Cray xname (such as x3000c0s19b4n0), a host name or an IP address."
    if not text or len(text) > 253:
        return message
    if _XNAME.match(text):
        return None
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if all(_HOST_LABEL.match(label) for label in labels) and not text.replace(".", "").isdigit():
        return None
    return message


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{2,62}$")
# The same rule as a JSON Schema pattern (for the API document).
S3_PATH_PATTERN = "^s3://[a-z0-9][a-z0-9._-]{2,62}/[^\\x00-\\x1f\\x7f]*[^/\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$"


def check_s3_path(path: str) -> str | None:
    """A link path must be `s3://bucket/key` with a valid bucket name and a non-empty key."""
    message = "path must be of the form s3://bucket/key."
    if not path.startswith("s3://"):
        return message
    rest = path[len("s3://") :]
    bucket, slash, key = rest.partition("/")
    if not slash or not bucket or not key.strip("/"):
        return message
    if not _BUCKET.match(bucket):
        return f"path has an invalid bucket name {bucket[:70]!r}: 3-63 characters of a-z, 0-9, '.', '-'."
    if len(key.encode("utf-8", "surrogatepass")) > S3_KEY_MAX_BYTES:
        return f"path's key is longer than {S3_KEY_MAX_BYTES} bytes."
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "path's key must not contain control characters."
    return None


def check_name(text: str, field: str = "name") -> str | None:
    if len(text) > NAME_MAX_LENGTH:
        return f"{field} must be at most {NAME_MAX_LENGTH} characters."
    return None


def nul_fields(value: Any, path: str = "") -> list[str]:
    """Where a decoded JSON value has a NUL character (in a key or a string): dotted field paths."""
    if not path and not _has_nul(value):
        return []  # the usual case, found without building a path for every member
    found: list[str] = []
    if isinstance(value, str):
        if "\x00" in value:
            found.append(path or "_schema")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.append(where.replace("\x00", "\\0"))
            else:
                found.extend(nul_fields(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(nul_fields(item, f"{path}.{index}" if path else str(index)))
    return found


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in str(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(raw: bytes, limit: int = JSON_MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects deeper than `limit`, checked before it is parsed."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # too few brackets to nest that deep, inside strings or not
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
