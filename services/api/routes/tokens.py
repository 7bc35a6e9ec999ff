"""``/v1/tokens``: API tokens (admin only). The plaintext is returned once, never stored."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from autosched.schemas import ErrorBody, TokenCreate, TokenCreated
from autosched.service import tokens
from services.api.deps import AdminAccess, SessionDep
from services.api.params import RowIdPath

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], dependencies=[AdminAccess])


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(req: TokenCreate, session: SessionDep) -> TokenCreated:
    """``device_keys``: what a worker token may register workers for (none: nothing)."""
    return tokens.create_token(session, req.name, req.scopes, req.device_keys)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorBody}},
)
def revoke_token(token_id: RowIdPath, session: SessionDep) -> Response:
    tokens.revoke_token(session, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
