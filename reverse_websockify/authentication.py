"""Whether an agent may attach to a service at all: its token, its certificate, the CRL.

Checked for every attach, a resume included, before the session rules of
``admission.py``. A refusal names the service, what the agent presented and
why, in one log line, and is counted by reason; the agent gets a plain HTTP
answer (401 for a token, 403 for a certificate) and keeps its backoff.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus

from .config import ServiceConfig
from .identity import AgentIdentity
from .revocation import RevocationList


@dataclass(frozen=True)
class Credentials:
    """What an agent presented: its Authorization header and the identity of its client certificate."""

    authorization: str = ""
    identity: AgentIdentity | None = None
    no_identity_because: str = "no client certificate"  # when identity is None, for the log line


@dataclass(frozen=True)
class AuthRefusal:
    status: HTTPStatus
    reason: str  # a short label: log field and metrics label
    text: str  # the one-line answer to the agent, and the log line's detail


def token_matches(config: ServiceConfig, authorization: str) -> bool:
    """``Bearer <token>`` against ``token`` or ``token_sha256``, in constant time."""
    offered = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
    if config.token_sha256 is not None:
        digest = hashlib.sha256((offered or "").encode()).digest()
        return offered is not None and hmac.compare_digest(digest, config.token_sha256)
    assert config.token is not None
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {config.token}".encode())


def check(config: ServiceConfig, credentials: Credentials, revoked: RevocationList) -> AuthRefusal | None:
    """None when the agent may attach to the service ``config``; else why not."""
    sid = config.id
    if config.token is not None or config.token_sha256 is not None:
        if not token_matches(config, credentials.authorization):
            why = "missing" if not credentials.authorization else "wrong"
            return AuthRefusal(HTTPStatus.UNAUTHORIZED, f"{why} token", f"{why} token for service {sid}")
    identity = credentials.identity
    if revoked.is_revoked(identity):
        return AuthRefusal(HTTPStatus.FORBIDDEN, "certificate revoked",
                           f"the client certificate {identity} is revoked (client_crl)")
    wanted = config.agent_identity
    if wanted is not None:
        if identity is None:
            return AuthRefusal(HTTPStatus.FORBIDDEN, "no identity",
                               f"service {sid} is bound to agent_identity {wanted!r} and the agent presented no "
                               f"certificate identity: {credentials.no_identity_because}")
        if not identity.matches(wanted):
            return AuthRefusal(HTTPStatus.FORBIDDEN, "identity mismatch",
                               f"service {sid} is bound to agent_identity {wanted!r}; the client certificate is "
                               f"for {', '.join(identity.names) or 'no CN or DNS name'}")
    return None


def still_allowed(config: ServiceConfig, identity: AgentIdentity | None, revoked: RevocationList) -> str | None:
    """After a reload: why an attached agent that presented ``identity`` must go, or None if it may stay."""
    if revoked.is_revoked(identity):
        return f"its client certificate {identity} is now revoked"
    wanted = config.agent_identity
    if wanted is not None and (identity is None or not identity.matches(wanted)):
        return f"the service is now bound to agent_identity {wanted!r} and the agent presented {identity or 'none'}"
    return None
