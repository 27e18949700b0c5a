"""Bearer-token access: every endpoint but /health requires a token from
`cemsd token create`. Unknown or missing: 401 with `WWW-Authenticate: Bearer`; revoked: 403."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cemsd.api.tokens import Access, check_token

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="A token from `cemsd token create --name CLIENT`")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cemsd"'}


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The client's token name, or an HTTP error."""
    verdict = check_token(request.app.state.api.db,
                          credentials.credentials if credentials else None)
    if verdict.access is Access.REVOKED:
        raise HTTPException(status_code=403, detail="this API token was revoked")
    if verdict.access is not Access.GRANTED or verdict.name is None:
        raise HTTPException(status_code=401, detail="missing or unknown API token",
                            headers=CHALLENGE)
    return verdict.name
