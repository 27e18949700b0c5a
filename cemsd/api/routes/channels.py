"""GET /v1/channels: every series the plant stores, with unit, kind and measuring range."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from cemsd.api.listing import ApiContext, context, table_item, table_model
from cemsd.settings.api import ApiConfig
from cemsd.store import schema

ChannelRow = table_model(schema.channels)


class Channels(BaseModel):
    items: list[ChannelRow]  # type: ignore[valid-type]


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/channels", response_model=Channels, summary="Stored series and their units")
    def channels(ctx: Annotated[ApiContext, Depends(context)]) -> Any:
        rows = ctx.db.channel_rows()
        return {"items": [table_item(row, schema.channels, ctx.tz) for row in rows]}

    return router
