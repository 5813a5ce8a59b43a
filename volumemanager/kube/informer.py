"""A reflector per kind: list, then watch from the list's resourceVersion, into a local store.

Why our own (docs/design/kubernetes-client.md): none of the client libraries relists on 410
Gone the way the kubelet's reflector does (they re-watch from "now" or from the same too-old
version, losing DELETEs), so lightkube only speaks HTTP, auth and URL building here, and this
module owns the informer semantics:

* list (paged), remember the list's resourceVersion, then watch from it with
  ``allowWatchBookmarks`` so an idle watch still advances its version (a reconnect after a
  quiet hour does not hit 410);
* a watch the server ends cleanly (``timeoutSeconds``) is re-opened from the last version; a
  dropped connection too, after a jittered backoff; an ERROR 410 (or any ERROR) relists;
* every failure (unreachable, 401/403, a dropped watch) is recorded with the time it began,
  and cleared only by the next successful list or watch: that is what ``status`` shows as
  "stale since T", and what keeps the source from tearing anything down meanwhile;
* objects are kept as the API's plain dicts (the manifest parser validates them, one code
  path for files and API objects); ``on_change`` is called after each event or relist with
  the keys that changed, so the consumer reacts in milliseconds, never by polling.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# (namespace, name); namespace "" for cluster-scoped kinds.
ObjKey = tuple[str, str]

#: The server ends each watch after this long (it is re-opened from the last version at once):
#: bounds how long a half-open connection can go unnoticed, at one request per kind per period.
WATCH_TIMEOUT_SECONDS = 290
#: Grace on top of the watch's own timeout before a silent connection counts as dead.
READ_GRACE_SECONDS = 30.0
#: Page size of a list (the kubelet's reflector uses 500).
LIST_PAGE = 500
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class KindSpec:
    """What one reflector lists and watches. ``resource`` is a lightkube resource class (it
    only spells the URL); ``accept`` filters objects the server could not select for us."""

    name: str  # "pods", or "secret default/db-pass" for a per-object watch
    resource: Any
    namespace: Optional[str] = None  # None: all namespaces (or a cluster-scoped kind)
    field_selector: Optional[str] = None
    accept: Optional[Callable[[Obj], bool]] = None


@dataclass(frozen=True)
class WatchState:
    """One kind's watch, as ``status`` shows it."""

    kind: str
    synced: bool  # listed whole at least once
    resource_version: Optional[str]
    last_event: Optional[float]  # wall-clock time of the last event, bookmark or list
    error: Optional[str]
    error_since: Optional[float]  # when the current run of failures began
    lists: int  # how many full lists (1 + relists)
    watching: bool  # a watch is open now

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "synced": self.synced, "resource_version": self.resource_version,
                "last_event": self.last_event, "error": self.error, "error_since": self.error_since,
                "lists": self.lists, "watching": self.watching}


def object_key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def describe_error(e: BaseException) -> str:
    """One line for status: the API's Status message when there is one (401/403/410...)."""
    response = getattr(e, "response", None)
    status = getattr(e, "status", None)
    code = getattr(status, "code", None)
    message = getattr(status, "message", None)
    if code is None and response is not None:
        code = getattr(response, "status_code", None)
        try:
            body = json.loads(response.read() if not getattr(response, "is_closed", True) else response.content)
            message = body.get("message") or message
        except Exception:  # the body may be gone (stream) or not JSON
            pass
    if code is not None:
        return f"HTTP {code}: {message or type(e).__name__}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class _Relist(Exception):
    """The watch cannot continue from its version (ERROR 410, or another ERROR event)."""

    def __init__(self, message: str, code: Any) -> None:
        super().__init__(message)
        self.code = code


class Reflector:
    """Keeps ``items()`` equal to the server's objects of one kind; one thread."""

    def __init__(self, client: Any, spec: KindSpec,
                 on_change: Callable[["Reflector", set[ObjKey]], None],
                 *, watch_timeout: int = WATCH_TIMEOUT_SECONDS, backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX) -> None:
        # lightkube's Client keeps its generic client here; we use only its request building,
        # sending (auth, TLS) and error mapping.
        self._gc = getattr(client, "_client", client)
        self.spec = spec
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._items: dict[ObjKey, Obj] = {}
        self._rv: Optional[str] = None
        self._synced = False
        self._last_event: Optional[float] = None
        self._error: Optional[str] = None
        self._error_since: Optional[float] = None
        self._lists = 0
        self._watching = False
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: Optional[threading.Thread] = None
        self._relist_now = False
        self._failures = 0  # in a row, since the last list or watch that worked: the backoff's exponent

    # -- public ------------------------------------------------------------------------------

    def start(self) -> "Reflector":
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def signal_stop(self) -> None:
        """Ask the thread to end (it does within a moment); ``stop`` also waits for it."""
        self._stop.set()
        self._interrupt()

    def stop(self, timeout: float = 2.0) -> None:
        self.signal_stop()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def relist(self) -> None:
        """List again at the next chance (SIGHUP): ends the current watch."""
        self._relist_now = True
        self._interrupt()

    def _interrupt(self) -> None:
        """End the open watch now: a read blocked in another thread is not woken by closing
        the response, so the socket under it is shut down (httpcore hands it out as the
        response's ``network_stream``)."""
        response = self._response
        if response is None:
            return
        try:
            sock = response.extensions["network_stream"].get_extra_info("socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # gone already, or a transport without a socket: the timeout ends it
            log.debug("%s: interrupting the watch failed", self.spec.name, exc_info=True)

    def items(self) -> dict[ObjKey, Obj]:
        with self._lock:
            return dict(self._items)

    def get(self, key: ObjKey) -> Optional[Obj]:
        with self._lock:
            return self._items.get(key)

    @property
    def synced(self) -> bool:
        return self._synced

    def state(self) -> WatchState:
        with self._lock:
            return WatchState(self.spec.name, self._synced, self._rv, self._last_event, self._error,
                              self._error_since, self._lists, self._watching)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list or self._relist_now:
                    self._relist_now = False
                    self._list()
                    need_list = False
                self._watch()  # returns when the server ends the watch cleanly
            except _Relist as e:
                need_list = True
                self._fail(str(e))
                if e.code != 410:  # 410: the version is too old, list at once; else the server is unwell
                    self._backoff()
            except Exception as e:  # unreachable, 401/403, dropped, bad reply: back off, then retry
                if self._stop.is_set():
                    return
                if self._relist_now:  # we ended the watch ourselves (resync): list at once
                    continue
                if _is_gone(e):
                    need_list = True
                self._fail(describe_error(e))
                self._backoff()
            finally:
                self._watching = False

    def _backoff(self) -> None:
        """Wait before the next try: exponential in the failures since the last list or watch
        that worked, jittered so that a restarted API server is not hit by every node at once."""
        self._failures += 1
        delay = min(self._backoff_max, self._backoff_initial * (2 ** min(self._failures - 1, 16)))
        delay *= 0.5 + random.random() / 2
        log.debug("%s: retrying in %.2f s", self.spec.name, delay)
        self._stop.wait(delay)

    def _fail(self, message: str) -> None:
        with self._lock:
            first = self._error is None
            self._error = message
            if self._error_since is None:
                self._error_since = time.time()
        if first:
            log.warning("API %s: %s; the last good objects are kept until it is listed again", self.spec.name, message)
        self._on_change(self, set())  # health changed

    def _ok(self) -> bool:
        """Clear the failure; True if there was one (the consumer must look at the health)."""
        with self._lock:
            had = self._error is not None
            self._error = None
            self._error_since = None
        if had:
            log.info("API %s: listing and watching again", self.spec.name)
        return had

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.spec.field_selector:
            params["fieldSelector"] = self.spec.field_selector
        return params

    def _namespace(self) -> Optional[str]:
        from lightkube.core.generic_client import ALL_NS
        from lightkube.core import resource as r

        if not issubclass(self.spec.resource, (r.NamespacedResource,)):
            return None
        return self.spec.namespace or ALL_NS

    def _list(self) -> None:
        gc = self._gc
        params = self._params()
        params["limit"] = str(LIST_PAGE)
        br = gc.prepare_request("list", res=self.spec.resource, namespace=self._namespace(), params=params)
        items: dict[ObjKey, Obj] = {}
        rv: Optional[str] = None
        while True:
            resp = gc.send(gc.build_adapter_request(br))
            gc.raise_for_status(resp)
            body = json.loads(resp.content)
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            for obj in body.get("items") or ():
                if self._accept(obj):
                    items[object_key(obj)] = obj
            cont = meta.get("continue")
            if not cont:
                break
            br.params["continue"] = cont
        with self._lock:
            old = self._items
            changed = {k for k in old.keys() | items.keys() if old.get(k) != items.get(k)}
            self._items = items
            self._rv = rv
            self._lists += 1
            self._last_event = time.time()
            first = not self._synced
            self._synced = True
        self._failures = 0
        cleared = self._ok()
        if changed or first or cleared:
            self._on_change(self, changed)

    def _accept(self, obj: Obj) -> bool:
        return self.spec.accept is None or bool(self.spec.accept(obj))

    def _watch(self) -> None:
        import httpx2

        gc = self._gc
        params = self._params()
        params.update({"resourceVersion": self._rv or "", "allowWatchBookmarks": "true",
                       "timeoutSeconds": str(self._watch_timeout)})
        br = gc.prepare_request("list", res=self.spec.resource, namespace=self._namespace(), watch=True,
                                params=params)
        timeout = httpx2.Timeout(10.0, read=self._watch_timeout + READ_GRACE_SECONDS)
        req = gc._client.build_request(br.method, br.url, params=br.params, timeout=timeout)
        resp = gc.send(req, stream=True)
        self._response = resp
        try:
            if self._stop.is_set():
                return
            resp.raise_for_status()
            self._watching = True
            self._failures = 0
            if self._ok():
                self._on_change(self, set())
            for line in resp.iter_lines():
                if not line:
                    continue
                self._event(json.loads(line))
        finally:
            self._response = None
            resp.close()

    def _event(self, ev: Obj) -> None:
        etype = ev.get("type")
        obj = ev.get("object") or {}
        if etype == "ERROR":
            code = obj.get("code")
            raise _Relist(f"watch ended by the server (HTTP {code}: {obj.get('message') or obj.get('reason')}); "
                          "listing again", code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        now = time.time()
        if etype == "BOOKMARK":
            with self._lock:
                self._rv = rv or self._rv
                self._last_event = now
            return
        key = object_key(obj)
        keep = etype in ("ADDED", "MODIFIED") and self._accept(obj)
        with self._lock:
            had = key in self._items
            if keep:
                self._items[key] = obj
            else:
                self._items.pop(key, None)
            self._rv = rv or self._rv
            self._last_event = now
        if keep or had:
            self._on_change(self, {key})


def _is_gone(e: BaseException) -> bool:
    status = getattr(e, "status", None)
    if getattr(status, "code", None) == 410:
        return True
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None) == 410
