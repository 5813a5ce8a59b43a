"""A small threaded HTTP server that speaks enough of the Kubernetes API for our client.

Why our own: tests of the API-server source must meet list/watch, resourceVersions,
bookmarks, 410 Gone, dropped connections, slow answers and 401/403 the way a real
kube-apiserver sends them, on demand and in a bounded time. A fake at the outermost edge
(the socket) keeps the real client library under test; nothing in the client is mocked.

Wire shapes follow the real server: list items carry no kind/apiVersion; watch events are
newline-separated JSON ``{"type", "object"}`` in a chunked 200 response; a too-old
resourceVersion on a watch is a 200 with one ``ERROR`` event whose object is a ``Status``
with ``code: 410, reason: Expired``; a BOOKMARK object holds only ``metadata.resourceVersion``.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit

from tests.fake_apiserver import resources
from tests.fake_apiserver.patch import merge_patch, strategic_merge_patch
from tests.fake_apiserver.resources import Kind
from tests.fake_apiserver.store import Conflict, NotFound, Obj, Store

DEFAULT_TOKEN = "fake-apiserver-token"


@dataclass
class RequestRecord:
    """One request as the server saw it, for assertions."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str = ""
    status: int = 0
    time: float = field(default_factory=time.monotonic)


def status_obj(code: int, reason: str, message: str, details: Optional[dict] = None) -> Obj:
    """A metav1.Status as the real server sends it for failures."""
    s: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": message, "reason": reason, "code": code}
    if details:
        s["details"] = details
    return s


class _HttpError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status = status_obj(code, reason, message, details)


class _Watch:
    """Book-keeping of one open watch, so controls can reach it."""

    def __init__(self, handler: "_Handler", bookmarks: bool) -> None:
        self.handler = handler
        self.bookmarks = bookmarks
        self.drop = False
        self.expire = False
        self.bookmark_now = False


class FakeApiServer:
    """The fake server and its test controls. Start with ``start()``; ``stop()`` keeps state."""

    def __init__(self, token: str = DEFAULT_TOKEN, bookmark_interval: float = 60.0) -> None:
        self.token = token
        self.store = Store()
        self.bookmark_interval = bookmark_interval
        self.delay = 0.0
        self.auth_failure: Optional[int] = None
        # Seconds a TokenRequest's token lives (expirationTimestamp), whatever expirationSeconds
        # asked for (>= 600 is enforced as the real server does): lets a test see a refresh.
        self.token_lifetime: Optional[float] = None
        self.tokens_issued: list[str] = []
        self.requests: list[RequestRecord] = []
        self.port = 0
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._watches: set[_Watch] = set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeApiServer":
        """Listen on 127.0.0.1 (an ephemeral port the first time, the same port after a stop)."""
        server = self

        class Handler(_Handler):
            fake = server

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._stopping = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; objects and resourceVersions stay."""
        if self._httpd is None:
            return
        self._stopping = True
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.store.cond:
            self.store.cond.notify_all()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path, token: Optional[str] = None, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server with a bearer token (JSON is valid YAML)."""
        path = Path(path)
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg, indent=1))
        return path

    # ---- state controls ----------------------------------------------------------------------
    def upsert(self, obj: Obj) -> Obj:
        """Create or replace an object (kind from ``obj["kind"]``); watchers see ADDED/MODIFIED."""
        return self.store.upsert(resources.lookup(obj["kind"]), obj)

    def delete(self, kind: str, namespace: Optional[str], name: str) -> Obj:
        """Delete an object; watchers see DELETED."""
        return self.store.delete(resources.lookup(kind), namespace, name)

    def get(self, kind: str, namespace: Optional[str], name: str) -> Obj:
        return self.store.get(resources.lookup(kind), namespace, name)

    def list(self, kind: str, namespace: Optional[str] = None) -> list[Obj]:
        return self.store.list(resources.lookup(kind), namespace)[1]

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def compact(self) -> int:
        """Forget history: watches from an older resourceVersion get 410 Gone (as do watchers behind)."""
        return self.store.compact()

    def expire_watches(self) -> None:
        """Send every open watch an ERROR 410 event and end it, as the watch cache does to a slow watcher."""
        self._poke(lambda w: setattr(w, "expire", True))

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk), like a network failure."""
        self._poke(lambda w: setattr(w, "drop", True))

    def send_bookmarks(self) -> None:
        """Make every watch that asked for bookmarks send one now."""
        self._poke(lambda w: setattr(w, "bookmark_now", True))

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def set_auth_failure(self, code: Optional[int]) -> None:
        """401 or 403 for every request from now on; None to heal."""
        assert code in (None, 401, 403)
        self.auth_failure = code

    def set_token_lifetime(self, seconds: Optional[float]) -> None:
        """Issue tokens that expire this many seconds after the request (None: as asked)."""
        self.token_lifetime = seconds

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering any request (watch: before the headers)."""
        self.delay = seconds

    def requests_matching(self, method: Optional[str] = None, path_contains: str = "", **query: str) -> list[RequestRecord]:
        """The logged requests with this method, path part and query values."""
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (method is None or r.method == method) and path_contains in r.path
                and all(r.query.get(k) == v for k, v in query.items())]

    def _poke(self, fn: Any) -> None:
        with self._lock:
            ws = list(self._watches)
        for w in ws:
            fn(w)
        with self.store.cond:
            self.store.cond.notify_all()


def _fake_jwt(claims: dict) -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'RS256', 'kid': 'fake'})}.{b64(claims)}.{base64.urlsafe_b64encode(b'fake-signature').rstrip(b'=').decode()}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is the record
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # ---- plumbing ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._record.status = code

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self._record = RequestRecord(method, parts.path, query, body, ctype)
        with self.fake._lock:
            self.fake.requests.append(self._record)
        if self.fake.delay:
            time.sleep(self.fake.delay)
        try:
            self._check_auth(method, parts.path)
            self._route(method, parts.path, query, body, ctype)
        except _HttpError as e:
            self._send_json(e.status["code"], e.status)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _check_auth(self, method: str, path: str) -> None:
        auth = self.headers.get("Authorization") or ""
        if self.fake.auth_failure == 401 or auth != f"Bearer {self.fake.token}":
            raise _HttpError(401, "Unauthorized", "Unauthorized")
        if self.fake.auth_failure == 403:
            raise _HttpError(403, "Forbidden",
                             f'forbidden: User "system:node:fake" cannot {method.lower()} path "{path}"',
                             {"kind": path.rstrip("/").split("/")[-1]})

    # ---- routing -----------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str], body: Any, ctype: str) -> None:
        segs = [s for s in path.split("/") if s]
        if method == "GET" and self._discovery(segs):
            return
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        namespace: Optional[str] = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        kind = resources.BY_PLURAL.get((group, version, rest[0]))
        if kind is None or (namespace is not None and not kind.namespaced):
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in kind.subresources:
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                if query.get("watch") in ("1", "true"):
                    return self._watch(kind, namespace, query)
                return self._list(kind, namespace, query)
            if method == "POST" and kind.namespaced and namespace is None:
                raise _HttpError(405, "MethodNotAllowed", "create needs a namespace in the path")
            if method == "POST":
                return self._create(kind, namespace, body)
            raise _HttpError(405, "MethodNotAllowed", f"{method} not allowed on a collection here")
        ns = namespace if kind.namespaced else None
        if sub == "token":
            if method != "POST":
                raise _HttpError(405, "MethodNotAllowed", "token: create only")
            return self._token(ns or "default", name, body)
        if method == "GET":
            return self._send_json(200, self._get(kind, ns, name))
        if method == "PUT":
            return self._update(kind, ns, name, body, sub)
        if method == "PATCH":
            return self._patch(kind, ns, name, body, ctype, sub)
        if method == "DELETE":
            try:
                return self._send_json(200, self.fake.store.delete(kind, ns, name))
            except NotFound:
                raise self._not_found(kind, name)
        raise _HttpError(405, "MethodNotAllowed", f"{method} not allowed")

    def _discovery(self, segs: list[str]) -> bool:
        """/version, /api, /api/v1, /apis, /apis/<g>/<v>: enough for clients that discover."""
        if segs == ["version"]:
            self._send_json(200, {"major": "1", "minor": "36", "gitVersion": "v1.36.0-fake", "platform": "linux/amd64"})
        elif segs == ["api"]:
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        elif segs == ["apis"]:
            self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in resources.groups().items()]})
        elif segs == ["api", "v1"] or (len(segs) == 3 and segs[0] == "apis"):
            group, version = ("", "v1") if segs[0] == "api" else (segs[1], segs[2])
            res = []
            for k in resources.KINDS:
                if (k.group, k.version) == (group, version):
                    res.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                                "kind": k.kind, "verbs": list(k.verbs)})
                    for s in k.subresources:
                        res.append({"name": f"{k.plural}/{s}", "singularName": "", "namespaced": k.namespaced,
                                    "kind": "TokenRequest" if s == "token" else k.kind,
                                    "verbs": ["create"] if s == "token" else ["get", "patch", "update"]})
            self._send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": f"{group}/{version}" if group else version, "resources": res})
        else:
            return False
        return True

    @staticmethod
    def _not_found(kind: Kind, name: str) -> _HttpError:
        return _HttpError(404, "NotFound", f'{kind.plural} "{name}" not found',
                          {"name": name, "group": kind.group, "kind": kind.plural})

    def _get(self, kind: Kind, ns: Optional[str], name: str) -> Obj:
        try:
            return self.fake.store.get(kind, ns, name)
        except NotFound:
            raise self._not_found(kind, name)

    # ---- list and watch ----------------------------------------------------------------------
    def _selectors(self, query: dict[str, str]) -> tuple[str, str]:
        return query.get("fieldSelector", ""), query.get("labelSelector", "")

    def _list(self, kind: Kind, namespace: Optional[str], query: dict[str, str]) -> None:
        store = self.fake.store
        fsel, lsel = self._selectors(query)
        rv_param = query.get("resourceVersion", "")
        cont = query.get("continue", "")
        offset = 0
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                cont_rv, offset = int(token["rv"]), int(token["start"])
            except (ValueError, KeyError, TypeError):
                raise _HttpError(400, "BadRequest", "invalid continue token")
            if cont_rv < store.compacted_rv:
                raise _HttpError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                                 "list result. You can start a new list without the continue parameter.")
        elif rv_param not in ("", "0"):
            try:
                want = int(rv_param)
            except ValueError:
                raise _HttpError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}")
            if query.get("resourceVersionMatch") == "Exact" and want < store.compacted_rv:
                raise _HttpError(410, "Expired", f"too old resource version: {want} ({store.compacted_rv})")
            if want > store.rv:
                raise _HttpError(504, "Timeout", f"Too large resource version: {want}, current: {store.rv}",
                                 {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                                  "retryAfterSeconds": 1})
        try:
            rv, items = store.list(kind, namespace, fsel, lsel)
        except ValueError as e:
            raise _HttpError(400, "BadRequest", str(e))
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(query.get("limit") or 0)
        if limit and offset + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": offset + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        items = items[offset: offset + limit] if limit else items[offset:]
        for it in items:  # the real server leaves these out of list items
            it.pop("kind", None)
            it.pop("apiVersion", None)
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta, "items": items})

    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, kind: Kind, namespace: Optional[str], query: dict[str, str]) -> None:
        fake, store = self.fake, self.fake.store
        fsel, lsel = self._selectors(query)
        from tests.fake_apiserver.store import matches  # local: keeps the top of the file readable
        try:
            matches({}, None, fsel, lsel)
        except ValueError as e:
            raise _HttpError(400, "BadRequest", str(e))
        rv_param = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._record.status = 200
        w = _Watch(self, bookmarks)
        with fake._lock:
            fake._watches.add(w)
        last_bookmark = time.monotonic()
        # Events are chosen under the store's lock and written outside it, so a slow reader
        # never holds up writers (or other watches).
        out: list[Obj] = []
        action: Optional[str] = None  # "end" (final chunk) or "cut" (socket closed mid-stream)

        def gone(rv: int) -> Obj:
            return {"type": "ERROR", "object": status_obj(
                410, "Expired", f"too old resource version: {rv} ({store.compacted_rv})")}

        try:
            with store.cond:
                if rv_param in ("", "0"):
                    # Start "from now": synthetic ADDED for every object that matches, as the real server does.
                    seen, items = store.list(kind, namespace, fsel, lsel)
                    out = [{"type": "ADDED", "object": it} for it in items]
                else:
                    seen = int(rv_param)
                    if seen < store.compacted_rv:
                        out, action = [gone(seen)], "end"
            while True:
                for o in out:
                    self._chunk(o)
                if action == "end":
                    return self._end()
                if action == "cut":
                    return self._cut()
                out = []
                with store.cond:
                    if fake._stopping or w.drop:
                        action = "cut"
                        continue
                    if w.expire or seen < store.compacted_rv:
                        out, action = [gone(seen)], "end"
                        continue
                    for ev in store.events_after(seen, kind.plural):
                        was = ev.prev is not None and ev.type != "ADDED" and matches(ev.prev, namespace, fsel, lsel)
                        now = ev.type != "DELETED" and matches(ev.obj, namespace, fsel, lsel)
                        etype = ("MODIFIED" if was else "ADDED") if now else ("DELETED" if was else None)
                        if etype:
                            out.append({"type": etype, "object": ev.obj})
                    seen = store.rv
                    t = time.monotonic()
                    if w.bookmarks and (w.bookmark_now or t - last_bookmark >= fake.bookmark_interval):
                        w.bookmark_now = False
                        last_bookmark = t
                        out.append({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                                                                    "metadata": {"resourceVersion": str(seen),
                                                                                 "creationTimestamp": None}}})
                    if t >= deadline:
                        action = "end"
                        continue
                    if out:
                        continue
                    wait = deadline - t
                    if w.bookmarks:
                        wait = min(wait, max(0.01, fake.bookmark_interval - (t - last_bookmark)))
                    store.cond.wait(min(wait, 0.5))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            with fake._lock:
                fake._watches.discard(w)

    def _end(self) -> None:
        """Close the stream cleanly (final zero chunk)."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Close the socket mid-stream: the client sees an incomplete chunked body."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- writes ------------------------------------------------------------------------------
    def _require_obj(self, body: Any, kind: Kind) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise _HttpError(400, "BadRequest", f"{kind.kind}: body must be an object with metadata")
        return body

    def _create(self, kind: Kind, namespace: Optional[str], body: Any) -> None:
        obj = self._require_obj(body, kind)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _HttpError(422, "Invalid", f"{kind.kind}: metadata.name: Required value")
        if kind.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _HttpError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        meta.pop("resourceVersion", None)
        try:
            self._send_json(201, self.fake.store.upsert(kind, obj, create_only=True))
        except Conflict:
            raise _HttpError(409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists',
                             {"name": meta["name"], "group": kind.group, "kind": kind.plural})

    @staticmethod
    def _split(kind: Kind, old: Obj, new: Obj, sub: Optional[str]) -> Obj:
        """Status subresource writes keep spec; main-resource writes keep status (if it has a subresource)."""
        if sub == "status":
            new["spec"] = old.get("spec")
            if new["spec"] is None:
                new.pop("spec")
        elif "status" in kind.subresources:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        return new

    def _update(self, kind: Kind, ns: Optional[str], name: str, body: Any, sub: Optional[str]) -> None:
        obj = self._require_obj(body, kind)
        old = self._get(kind, ns, name)
        obj["metadata"]["name"] = name
        if ns:
            obj["metadata"]["namespace"] = ns
        obj = self._split(kind, old, obj, sub)
        try:
            self._send_json(200, self.fake.store.upsert(kind, obj, check_rv=True))
        except Conflict:
            raise _HttpError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{name}": the object '
                             "has been modified; please apply your changes to the latest version and try again")
        except NotFound:
            raise self._not_found(kind, name)

    def _patch(self, kind: Kind, ns: Optional[str], name: str, body: Any, ctype: str, sub: Optional[str]) -> None:
        old = self._get(kind, ns, name)
        if ctype == "application/merge-patch+json":
            new = merge_patch(old, body)
        elif ctype == "application/strategic-merge-patch+json":
            new = strategic_merge_patch(old, body)
        else:
            raise _HttpError(415, "UnsupportedMediaType", f"the fake supports merge and strategic merge patches, not {ctype!r}")
        new["metadata"]["name"], new["metadata"]["uid"] = name, old["metadata"]["uid"]
        new = self._split(kind, old, new, sub)
        try:
            self._send_json(200, self.fake.store.upsert(kind, new, check_rv=True))
        except Conflict:
            raise _HttpError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been modified')

    def _token(self, ns: str, sa_name: str, body: Any) -> None:
        """TokenRequest: the service account (and a bound pod, by name and uid) must exist."""
        sa = self._get(resources.lookup("serviceaccounts"), ns, sa_name)
        if not isinstance(body, dict) or body.get("kind") != "TokenRequest":
            raise _HttpError(400, "BadRequest", "body must be an authentication.k8s.io/v1 TokenRequest")
        spec = body.get("spec") or {}
        exp_s = int(spec.get("expirationSeconds") or 3600)
        if exp_s < 600:
            raise _HttpError(422, "Invalid", "TokenRequest.authentication.k8s.io is invalid: spec.expirationSeconds: "
                             "Invalid value: may not specify a duration less than 10 minutes")
        ref = spec.get("boundObjectRef")
        pod_claim = None
        if ref:
            if ref.get("kind") != "Pod":
                raise _HttpError(422, "Invalid", "boundObjectRef.kind: only Pod is supported by the fake")
            pod = self._get(resources.lookup("pods"), ns, ref.get("name", ""))
            if ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]:
                raise _HttpError(409, "Conflict", f'the UID in the bound object reference ({ref["uid"]}) does not match '
                                 f'the UID in record. The object might have been deleted and then recreated')
            pod_claim = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        now = datetime.now(timezone.utc).replace(microsecond=0)
        lifetime = self.fake.token_lifetime
        exp = (datetime.now(timezone.utc) + timedelta(seconds=lifetime) if lifetime is not None
               else now + timedelta(seconds=exp_s))
        audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]
        claims = {"aud": audiences, "exp": int(exp.timestamp()), "iat": int(now.timestamp()),
                  "iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:{ns}:{sa_name}",
                  "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]}}}
        if pod_claim:
            claims["kubernetes.io"]["pod"] = pod_claim
        claims["jti"] = str(uuid.uuid4())  # every token differs, as the real server's do
        token = _fake_jwt(claims)
        self.fake.tokens_issued.append(token)
        out = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": None},
               "spec": {"audiences": audiences, "expirationSeconds": exp_s, "boundObjectRef": ref},
               "status": {"token": token, "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        self._send_json(201, out)
