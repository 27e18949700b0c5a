"""GET /v1/chain/head (pin it) and /v1/chain/links (recheck it): the hash chain over
sealed records, specified in docs/TAMPER-EVIDENCE.md."""

from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from cemsd import chain
from cemsd.api.listing import ApiContext, context, table_listing
from cemsd.chain import utc_text
from cemsd.periods import local_label
from cemsd.settings.api import ApiConfig
from cemsd.store import schema


class ChainHead(BaseModel):
    """The newest link. A registry stores (seq, chain_hash) and later checks that link
    `seq` still has that chain_hash: a rewritten or truncated chain cannot."""

    seq: int  # 0 while nothing is sealed
    chain_hash: str  # the genesis value while nothing is sealed
    genesis: str
    form: int  # version of the canonical form
    record_table: str | None
    record_id: int | None
    record_hash: str | None
    channel: str | None
    start_utc: str | None
    start_local: str | None
    sealed_at: str | None


def head_document(link: Any, tz: ZoneInfo) -> dict[str, Any]:
    """A ChainHead of the newest link (a row of the chain), or of none yet."""
    empty = {"seq": 0, "chain_hash": chain.GENESIS, "genesis": chain.GENESIS,
             "form": chain.FORM}
    if link is None:
        return {**empty, **dict.fromkeys(
            ("record_table", "record_id", "record_hash", "channel", "start_utc",
             "start_local", "sealed_at"))}
    return {**empty, "seq": int(link.seq), "chain_hash": link.chain_hash,
            "form": link.form, "record_table": link.record_table,
            "record_id": int(link.record_id), "record_hash": link.record_hash,
            "channel": link.channel, "start_utc": utc_text(link.ts),
            "start_local": local_label(link.ts.timestamp(), tz),
            "sealed_at": utc_text(link.sealed_at)}


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/chain/head", response_model=ChainHead, summary="The hash chain's newest link")
    def chain_head(ctx: Annotated[ApiContext, Depends(context)]) -> Any:
        return head_document(chain.head(ctx.db), ctx.tz)

    table_listing(router, "/chain/links", schema.chain, settings,
                  summary="Links of the hash chain in order (filter by hour and channel)",
                  keys=[schema.chain.c.seq])
    return router
