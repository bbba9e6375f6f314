"""Who is calling: a bearer token (API clients) or a signed cookie (the chat page)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import g, request
from flask import session as cookie  # Flask's signed-cookie session: not a chat session
from sqlalchemy import select

from app.errors import Forbidden, Unauthorized
from app.models import User, utcnow
from app.wiring import Wiring

COOKIE_USER_KEY = "uid"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_user(services: Wiring, name: str) -> tuple[User, str]:
    """A user and its bearer token. The token is returned once and stored only as a hash."""
    token = "arz_" + secrets.token_urlsafe(32)
    with services.db.write() as db:
        user = User(name=name, token_hash=hash_token(token), kind="api")
        db.add(user)
        db.flush()
    return user, token


def live_users_named(services: Wiring, name: str) -> list[User]:
    with services.db.read() as db:
        return db.scalars(select(User).where(User.name == name, User.revoked_at.is_(None))).all()


def list_users(services: Wiring, *, include_all: bool = False) -> list[User]:
    """API users that can still call, oldest first; `include_all`: cookie users and revoked too."""
    query = select(User).order_by(User.id)
    if not include_all:
        query = query.where(User.kind == "api", User.revoked_at.is_(None))
    with services.db.read() as db:
        return db.scalars(query).all()


def revoke_user(services: Wiring, name_or_id: str) -> User:
    """Revoke by id, or by name when exactly one live user has it."""
    from app.errors import InvalidBody, NotFound

    with services.db.write() as db:
        live = select(User).where(User.revoked_at.is_(None))
        if name_or_id.isdigit():
            matches = db.scalars(live.where(User.id == int(name_or_id))).all()
        else:
            matches = db.scalars(live.where(User.name == name_or_id)).all()
        if not matches:
            raise NotFound(f"no live user {name_or_id!r}")
        if len(matches) > 1:
            raise InvalidBody(f"{len(matches)} users are named {name_or_id!r}: revoke by id "
                              f"({', '.join(str(u.id) for u in matches)})")
        user = matches[0]
        user.revoked_at = utcnow()
    return user


ANONYMOUS_USER_ID = 0
"""The user id of a browser whose cookie identity has no row yet (it has only read so far). No
row has it (ids start at 1), so every read as it finds nothing (an empty list, 404s), and nothing
is written as it: a write creates the row first (`authenticate(..., create=True)`)."""

WEB_IDENTITY_BYTES = 18


def new_web_identity() -> str:
    """A browser's identity for its cookie: random, signed in the cookie, no row until it writes."""
    return secrets.token_urlsafe(WEB_IDENTITY_BYTES)


def _web_identity_hash(identity: str) -> str:
    # In the token_hash column (unique), namespaced so that no bearer token hashes the same; the
    # bearer path accepts API users only, whatever the hash.
    return hash_token("web:" + identity)


def create_web_user(services: Wiring, identity: str | None = None) -> User:
    """The row of a browser identity (its first write). Of two first writes at once (two tabs),
    one inserts and the other finds its row (the unique token_hash)."""
    from sqlalchemy.exc import IntegrityError

    token_hash = _web_identity_hash(identity) if identity is not None else None
    try:
        with services.db.write() as db:
            user = User(name="web-" + secrets.token_hex(4), kind="web", token_hash=token_hash)
            db.add(user)
            db.flush()
        return user
    except IntegrityError:
        if token_hash is None:
            raise
        with services.db.read() as db:
            return db.scalars(select(User).where(User.token_hash == token_hash)).one()


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _refuse_cross_site(req) -> None:
    """CSRF: a cookie-authenticated unsafe request must come from our own pages. Browsers say where
    a request comes from (Sec-Fetch-Site; Origin on every cross-origin POST); SameSite=Lax alone
    lets a same-site page (another port of this host, a sibling subdomain) send the cookie along
    with a body-less POST. A client that sends neither header is not a browser acting for a victim."""
    if req.method in _SAFE_METHODS:
        return
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = req.headers.get("Origin")
    # Host only: behind a TLS-terminating proxy the scheme we see is not the browser's.
    if origin is not None and urlsplit(origin).netloc != req.host:
        raise Forbidden("cross-origin request refused (Origin does not match)")


def _is_web_identity(uid: object) -> bool:
    return isinstance(uid, str) and 16 <= len(uid) <= 64


def _bearer_user(db, header: str) -> User:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer TOKEN'")
    user = db.scalars(select(User).where(User.token_hash == hash_token(token.strip()))).one_or_none()
    # compare_digest on the hash keeps the check's timing independent of the match
    if user is None or user.revoked_at is not None or user.kind != "api" or not hmac.compare_digest(
        user.token_hash or "", hash_token(token.strip())
    ):
        raise Unauthorized("unknown or revoked token")
    return user


def _cookie_user(db, uid: object) -> User | None:
    """The row of the cookie's identity; None for an identity with no row yet."""
    if _is_web_identity(uid):
        user = db.scalars(select(User).where(User.token_hash == _web_identity_hash(uid))).one_or_none()
        if user is None:
            return None
    else:
        # Cookies from before issue 13 name the row's id: those browsers keep their chats.
        user = db.get(User, uid) if isinstance(uid, int) and not isinstance(uid, bool) else None
    # The cookie is the chat page's identity only: an API user's id in a (forged) cookie is no
    # identity, whoever signed it.
    if user is None or user.revoked_at is not None or user.kind != "web":
        raise Unauthorized()
    return user


def authenticate(services: Wiring, *, create: bool = False) -> int:
    """The caller's user id, or Unauthorized. Cached on `g` for the request, with
    `g.rate_limit_key` (the bucket of app/ratelimit.py). A browser identity with no row yet is
    ANONYMOUS_USER_ID, unless `create` (a write), which makes its row: a visit to the page writes
    nothing (issue 13: every GET / used to make a row)."""
    if "user_id" in g and (g.user_id != ANONYMOUS_USER_ID or not create):
        return g.user_id
    header = request.headers.get("Authorization", "")
    uid = cookie.get(COOKIE_USER_KEY)
    with services.db.read() as db:
        user = _bearer_user(db, header) if header else _cookie_user(db, uid)
    if not header:
        _refuse_cross_site(request)  # before any row is made for the identity, too
        if user is None and not create:
            g.user_id, g.rate_limit_key = ANONYMOUS_USER_ID, "web:" + _web_identity_hash(uid)
            return ANONYMOUS_USER_ID
        if user is None:
            user = create_web_user(services, uid)
    g.user_id, g.rate_limit_key = user.id, f"user:{user.id}"
    return user.id
