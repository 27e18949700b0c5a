"""GET /v1/keys: the public half of the plant's bundle-signing key (cemsd/signing.py),
so a verifier can pin its fingerprint and check bundles offline (`cemsd verify-bundle
--public-key`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from cemsd import signing
from cemsd.config import Config
from cemsd.errors import CemsdError
from cemsd.settings.api import ApiConfig


class SigningKey(BaseModel):
    algorithm: Annotated[str, Field(description="Ed25519")]
    public_key_hex: Annotated[str, Field(description="the 32-byte raw public key, hex")]
    public_key_pem: Annotated[str, Field(description="the same as SubjectPublicKeyInfo PEM")]
    fingerprint: Annotated[str, Field(description="SHA256: and the hex SHA-256 of the raw "
                                                  "public key")]


class Keys(BaseModel):
    bundle_signing: SigningKey


def signing_info(request: Request) -> dict[str, str]:
    """The key of the plant the API serves; created on first use in its state directory."""
    config = getattr(request.app.state, "config", None)
    if config is None:
        raise HTTPException(503, "the signing key needs the plant's configuration")
    return key_info(config)


def key_info(config: Config) -> dict[str, str]:
    """The public half of the key in the configuration's state directory (a 503 naming
    the problem when it cannot be read or made)."""
    try:
        key = signing.load_or_create(config.storage.state_dir)
    except CemsdError as exc:
        raise HTTPException(503, str(exc)) from None
    return signing.public_info(key.public_key())


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/keys", response_model=Keys,
                summary="The public key that signs verification bundles")
    def keys(request: Request) -> Any:
        return {"bundle_signing": signing_info(request)}

    return router
