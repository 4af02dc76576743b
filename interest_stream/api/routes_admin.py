"""The admin route: ``DELETE /v1/users/{user_id}`` (bearer ``INTEREST_ADMIN_TOKEN``)."""

# No ``from __future__ import annotations``: FastAPI evaluates the route signatures,
# which use names local to :func:`admin_router` (the bearer scheme).
import hmac
import logging
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from interest_stream.api.errors import ApiError, PublishError
from interest_stream.api.routes_users import UserId
from interest_stream.api.schemas import ForgetOut
from interest_stream.api.state import ApiState

__all__ = ["admin_router"]

logger = logging.getLogger(__name__)


def admin_router(state: ApiState) -> APIRouter:
    """The admin routes over ``state``."""
    router = APIRouter()
    settings = state.settings
    bearer = HTTPBearer(auto_error=False, description="INTEREST_ADMIN_TOKEN")

    def require_admin(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        token = settings.admin_token
        if token is None or not token.get_secret_value():
            raise ApiError(
                403, "admin_disabled", "admin calls are disabled: set INTEREST_ADMIN_TOKEN"
            )
        if creds is None or not creds.credentials:
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send 'Authorization: Bearer <INTEREST_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(
            creds.credentials.encode("utf-8"), token.get_secret_value().encode("utf-8")
        ):
            raise ApiError(403, "forbidden", "the admin token is wrong")

    @router.delete(
        "/v1/users/{user_id:path}",
        response_model=ForgetOut,
        tags=["admin"],
        dependencies=[Depends(require_admin)],
    )
    async def forget_user(user_id: UserId) -> dict[str, Any]:
        """Forget a user: tombstone on the output topic, removal from this replica, hooks.

        Every replica drops the user when its consumer reads the tombstone; the
        worker deletes its state on the forget command sent by the default hook.
        A failed hook answers 503 (the call is idempotent: retry it).
        """
        # before the tombstone: our consumer may apply it first (a request in opensearch mode)
        held = await state.users_call(state.users.__contains__, user_id)
        try:
            await anyio.to_thread.run_sync(state.publisher.tombstone, user_id)
        except PublishError as exc:
            raise ApiError(503, "kafka_unavailable", str(exc)) from exc
        removed = await anyio.to_thread.run_sync(state.users.remove, user_id) or held
        failed: list[str] = []
        for hook in state.forget_hooks:
            try:
                await anyio.to_thread.run_sync(hook, user_id)
            except Exception as exc:
                logger.exception("forget hook %r failed for user %r", hook, user_id)
                failed.append(f"{type(exc).__name__}: {exc}")
        if failed:
            raise ApiError(
                503,
                "kafka_unavailable",
                f"user {user_id!r} was removed from the output topic but not everywhere: "
                + "; ".join(failed)
                + "; retry the DELETE",
            )
        state.metrics.forgotten.inc()
        logger.info("forgot user %r (held here: %s)", user_id, removed)
        return {"user_id": user_id, "removed": removed, "tombstone": True}

    return router
