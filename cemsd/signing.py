"""The plant's Ed25519 key for signing verification bundles (decision 0174).

The private key lives in the state directory (`bundle-signing-ed25519.pem`, PKCS#8 PEM,
mode 0600), created on first use and never leaves it. Its public key and fingerprint are
published by the API (GET /v1/keys) and the status page, so a verifier can pin them and
check a bundle's signature offline (`cemsd verify-bundle --public-key`).

The fingerprint is "SHA256:" and the hex SHA-256 of the 32-byte raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cemsd.errors import CemsdError

KEY_FILE = "bundle-signing-ed25519.pem"
ALGORITHM = "Ed25519"


class SigningKeyError(CemsdError):
    """A key that cannot be read or created."""


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def load_or_create(state_dir: Path) -> Ed25519PrivateKey:
    """The plant's signing key; created (0600, written atomically) if there is none."""
    path = key_path(state_dir)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            os.link(tmp, path)  # never replaces a key another process created meanwhile
            tmp.unlink()
        except FileExistsError:
            tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise SigningKeyError(f"cannot create the signing key {path}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return key


def raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(public: Ed25519PublicKey) -> str:
    return "SHA256:" + hashlib.sha256(raw(public)).hexdigest()


def public_info(public: Ed25519PublicKey) -> dict[str, str]:
    """What the API and the status page publish."""
    return {"algorithm": ALGORITHM, "public_key_hex": raw(public).hex(),
            "public_key_pem": public_pem(public), "fingerprint": fingerprint(public)}


def load_public(text: str) -> Ed25519PublicKey:
    """A public key given as a PEM file's path, PEM text, 64 hex digits or base64 of the
    32 raw bytes."""
    candidate = text.strip()
    path = Path(candidate)
    if "\n" not in candidate and len(candidate) < 4096 and path.is_file():
        candidate = path.read_text(encoding="utf-8").strip()
    try:
        if candidate.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(candidate.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            return key
        data = bytes.fromhex(candidate) if len(candidate) == 64 else \
            base64.b64decode(candidate, validate=True)
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError as exc:
        raise SigningKeyError(f"cannot read the public key {text[:80]!r}: {exc}") from None


def verifies(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
