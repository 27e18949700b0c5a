"""One module per resource, each with `routes(settings) -> APIRouter`. Adding a resource
(bypass events, period reports) is a module here and one entry in ROUTES; a table listed
as it is stored needs only `listing.table_listing`."""

from __future__ import annotations

from cemsd.api.routes import chain, channels, columns, keys, periods, qaqc, reduction, status

ROUTES = (channels.routes, columns.routes, periods.routes, qaqc.routes, reduction.routes,
          chain.routes, status.routes, keys.routes)
