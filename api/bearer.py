"""Who is calling: the user behind the request's bearer token."""

from __future__ import annotations

from flask import request
from sqlalchemy.orm import Session

from models.accounts import User, user_for_token
from models.errors import Forbidden, Unauthorized


def current_user(session: Session, *roles: str) -> User:
    """The caller; Unauthorized without a valid token, Forbidden if not one of `roles`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    user = user_for_token(session, token.strip())
    if roles and user.role not in roles:
        raise Forbidden(f"Only a {' or '.join(roles)} can do this.")
    return user
