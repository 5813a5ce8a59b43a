"""Service-account tokens for projected ``serviceAccountToken`` sources (issue 15, item 6).

The kubelet's token manager (``pkg/kubelet/token``), with one difference in *when*:

* a token is requested through the TokenRequest API
  (``POST serviceaccounts/<sa>/token``) with the source's ``audience`` (none: the API server's
  own) and ``expirationSeconds``, bound to the Pod (``boundObjectRef``: kind, name, uid), so
  the API server invalidates it when the pod goes;
* it is cached per (pod uid, service account, audience, expirationSeconds) -- the kubelet's
  key -- and refreshed at 80 % of its lifetime, or after 24 h, whichever comes first. The
  lifetime is measured from the moment the answer arrived to its ``expirationTimestamp`` (what
  the server really granted, which may be shorter than asked);
* the kubelet refreshes lazily, when the projected volume's periodic remount asks for the
  token; here each token has **a timer of its own** that fires at its refresh moment, fetches
  the new token and tells the owner (``on_change(pod uid)``), which re-resolves that pod's
  volumes: the projected plugin's content token changes and the volume is written again
  through the atomic writer. No sweep over pods, no poll.

Requests never run on the caller's thread: a lookup that misses starts a fetch and says the
token is being requested (the volume waits; the fetch's ``on_change`` wakes it). A failed
request is retried with a growing delay; a refresh that fails keeps the old token while it is
still valid.

The token is a secret: it is held in memory only, never logged, never in ``status``; errors
carry the API's message, which never holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

log = logging.getLogger(__name__)

REFRESH_FRACTION = 0.8  # of the lifetime (the kubelet refreshes with 20 % left)
MAX_TTL = 24 * 3600.0  # refresh a token after a day whatever its expiry (the kubelet's maxTTL)
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0


@dataclass(frozen=True)
class TokenKey:
    """What a token is cached by (the kubelet's keyFunc), plus the pod's name to bind it to."""

    pod_uid: str
    namespace: str
    pod_name: str
    service_account: str
    audience: str  # "" = the API server's own audience
    expiration_seconds: int


class TokenUnavailable(Exception):
    """No valid token now: ``reason`` says why (never holds a token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IssuedToken:
    token: bytes = field(repr=False)
    expires_at: float  # Unix time


# (key) -> the issued token; raises on failure with a message fit for a log.
Requester = Callable[[TokenKey], IssuedToken]


@dataclass
class _Entry:
    key: TokenKey
    token: Optional[IssuedToken] = field(default=None, repr=False)
    fetched_at: float = 0.0
    refresh_at: float = 0.0
    error: Optional[str] = None
    failures: int = 0
    fetching: bool = False
    timer: Optional[threading.Timer] = None


class TokenManager:
    """Cache, fetch and refresh of bound service-account tokens (see the module doc)."""

    def __init__(self, request: Requester, on_change: Callable[[str], None], *,
                 clock: Callable[[], float] = time.time, retry_initial: float = RETRY_INITIAL,
                 retry_max: float = RETRY_MAX, alive: Optional[Callable[[str], bool]] = None) -> None:
        self._request = request
        # pod uid -> whether the pod still exists: a timer of a gone pod drops its entry
        # instead of requesting a token for it.
        self._alive = alive
        self._on_change = on_change
        self._clock = clock
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._lock = threading.Lock()
        self._entries: dict[TokenKey, _Entry] = {}
        self._stopped = False
        self.requests = 0  # TokenRequests sent (for tests and logs; never the tokens)

    # -- lookups -------------------------------------------------------------------------------

    def get(self, key: TokenKey) -> bytes:
        """The cached token of ``key``; ``TokenUnavailable`` while it is being requested (a fetch
        is started on the first miss) or when requests fail and no valid token is left."""
        start = False
        with self._lock:
            if self._stopped:
                raise TokenUnavailable("the token manager is stopped")
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(key, fetching=True)
                start = True
            token, error = entry.token, entry.error
        if start:
            self._spawn(key)
        if token is not None and token.expires_at > self._clock():
            return token.token
        who = f"service account {key.namespace}/{key.service_account}"
        if error is not None:
            raise TokenUnavailable(f"TokenRequest for {who} failed: {error}")
        raise TokenUnavailable(f"a token for {who} is being requested from the API server")

    def forget_pods(self, live_pod_uids: Iterable[str]) -> None:
        """Drop the tokens of pods that are gone (their timers too): nothing is refreshed for
        a pod that no longer exists."""
        live = set(live_pod_uids)
        with self._lock:
            gone = [k for k in self._entries if k.pod_uid not in live]
            entries = [self._entries.pop(k) for k in gone]
        for e in entries:
            if e.timer is not None:
                e.timer.cancel()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            entries = list(self._entries.values())
            self._entries.clear()
        for e in entries:
            if e.timer is not None:
                e.timer.cancel()

    def describe(self) -> list[dict[str, Any]]:
        """What the cache holds, without tokens (pod, service account, audience, refresh time)."""
        with self._lock:
            return [{"pod_uid": e.key.pod_uid, "service_account": e.key.service_account,
                     "audience": e.key.audience, "has_token": e.token is not None,
                     "refresh_at": e.refresh_at or None, "error": e.error} for e in self._entries.values()]

    # -- fetching ------------------------------------------------------------------------------

    def _spawn(self, key: TokenKey) -> None:
        threading.Thread(target=self._fetch, args=(key,), name="token-request", daemon=True).start()

    def _fetch(self, key: TokenKey) -> None:
        """Request the token of ``key`` (first time, refresh or retry) and schedule the next fetch."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._stopped:
                return
            entry.fetching = True
            entry.timer = None
        if self._alive is not None and not self._alive(key.pod_uid):
            with self._lock:
                self._entries.pop(key, None)
            return
        who = f"pod {key.namespace}/{key.pod_name} (service account {key.service_account})"
        try:
            self.requests += 1
            issued = self._request(key)
            error = None
        except Exception as e:  # noqa: BLE001 - any failure is retried; the message never holds a token
            issued, error = None, _describe(e)
        now = self._clock()
        notify = False
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._stopped:
                return  # the pod went meanwhile
            entry.fetching = False
            if issued is not None:
                lifetime = max(0.0, issued.expires_at - now)
                entry.token, entry.fetched_at, entry.error, entry.failures = issued, now, None, 0
                entry.refresh_at = now + min(lifetime * REFRESH_FRACTION, MAX_TTL)
                delay = entry.refresh_at - now
                notify = True
            else:
                entry.failures += 1
                notify = entry.error != error
                entry.error = error
                delay = min(self._retry_initial * 2 ** (entry.failures - 1), self._retry_max)
                if entry.token is not None:  # a failed refresh: retry before the old token expires
                    delay = min(delay, max(0.0, (entry.token.expires_at - now) / 2))
            timer = threading.Timer(max(0.0, delay), self._fetch, args=(key,))
            timer.daemon = True
            entry.timer = timer
            timer.start()
        if issued is not None:
            log.info("service-account token for %s issued (audience %s), valid %.0f s, refresh in %.1f s",
                     who, key.audience or "<api server>", issued.expires_at - now, delay,
                     extra={"pod_uid": key.pod_uid})
        else:
            log.warning("TokenRequest for %s failed (retry in %.1f s): %s", who, delay, error,
                        extra={"pod_uid": key.pod_uid})
        if notify:
            try:
                self._on_change(key.pod_uid)
            except Exception:  # noqa: BLE001 - a hook's bug must not stop the refreshes
                log.exception("token change hook failed")


def _describe(e: BaseException) -> str:
    status = getattr(e, "status", None)
    message = getattr(status, "message", None)
    code = getattr(status, "code", None)
    if message:
        return f"{code} {message}" if code else str(message)
    return f"{type(e).__name__}: {e}"


def lightkube_requester(client: Any) -> Requester:
    """A requester over a lightkube ``Client``: ``create`` of the ServiceAccount's ``token``
    subresource (authentication.k8s.io/v1 TokenRequest) bound to the pod."""
    from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ServiceAccountToken

    from volumemanager.sources.apiserver import parse_time

    def request(key: TokenKey) -> IssuedToken:
        body = ServiceAccountToken(
            metadata=ObjectMeta(name=key.service_account, namespace=key.namespace),
            spec=TokenRequestSpec(
                audiences=[key.audience] if key.audience else [],
                expirationSeconds=key.expiration_seconds,
                boundObjectRef=BoundObjectReference(apiVersion="v1", kind="Pod", name=key.pod_name,
                                                    uid=key.pod_uid)))
        out = client.create(body, key.service_account, namespace=key.namespace)
        status = out.status
        token = getattr(status, "token", None)
        expires = getattr(status, "expirationTimestamp", None)
        if not token:
            raise ValueError("the TokenRequest answer has no status.token")
        if hasattr(expires, "timestamp"):
            at = float(expires.timestamp())
        else:
            parsed = parse_time(expires)
            if parsed is None:
                raise ValueError("the TokenRequest answer has no valid status.expirationTimestamp")
            at = parsed
        return IssuedToken(token.encode(), at)

    return request


def projected_token_lookup(manager: TokenManager, is_api_pod: Callable[[str], bool]):
    """The host's ``service_account_token`` lookup over ``manager``: None for a pod that does
    not come from the API server (manifest mode keeps its waiting reason: the API server knows
    no such pod to bind a token to); the projected plugin's ``ContentUnavailable`` while the
    token is requested or its requests fail."""
    from volumemanager.plugins.projection import ContentUnavailable

    def lookup(pod: Any, audience: str, expiration_seconds: int) -> Optional[bytes]:
        if not is_api_pod(pod.uid):
            return None
        key = TokenKey(pod.uid, pod.namespace, pod.name, pod.service_account_name or "default",
                       audience or "", int(expiration_seconds))
        try:
            return manager.get(key)
        except TokenUnavailable as e:
            raise ContentUnavailable(e.reason, f"a token for service account {pod.namespace}/"
                                     f"{key.service_account} from the API server") from None

    return lookup
