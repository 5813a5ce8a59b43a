"""The fake API server's object store: objects, one resourceVersion counter, an event history.

Why like this: the real server (etcd + watch cache) gives every write a new, cluster-wide
increasing resourceVersion and lets a watch resume from any version still in its history;
versions older than the last compaction are "too old" (410 Gone). A single counter, an
append-only history and a ``compacted_rv`` mark are the smallest model with those rules.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from tests.fake_apiserver.resources import Kind

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    """One write, as the watch cache keeps it: the object after and before the write."""

    rv: int
    plural: str
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    prev: Optional[Obj]


class Conflict(Exception):
    """resourceVersion precondition failed, or the object exists already."""


class NotFound(Exception):
    pass


# ---- selectors -------------------------------------------------------------------------------

def _field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def field_selector_matches(selector: str, obj: Obj) -> bool:
    """``a.b=v,c!=w`` (also ``==``), as the API server's field selectors; an unset field is ""."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(!=|==|=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector term {term!r}")
        key, op, want = m.groups()
        have = _field_value(obj, key)
        if (op == "!=") == (have == want):
            return False
    return True


_SET_TERM = re.compile(r"\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*")


def _split_label_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def label_selector_matches(selector: str, obj: Obj) -> bool:
    """Basic label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a)``."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in _split_label_terms(selector):
        m = _SET_TERM.fullmatch(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            inside = key in labels and labels[key] in values
            if (op == "in") != inside:
                return False
            continue
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)\s*(!=|==|=)\s*([A-Za-z0-9_.-]*)", term)
        if m:
            key, op, want = m.groups()
            if op == "!=":
                if labels.get(key) == want:
                    return False
            elif labels.get(key) != want:
                return False
            continue
        if term.startswith("!"):
            if term[1:].strip() in labels:
                return False
            continue
        if re.fullmatch(r"[A-Za-z0-9_./-]+", term):
            if term not in labels:
                return False
            continue
        raise ValueError(f"invalid label selector term {term!r}")
    return True


def matches(obj: Obj, namespace: Optional[str], field_sel: str, label_sel: str) -> bool:
    if namespace is not None and (obj.get("metadata") or {}).get("namespace") != namespace:
        return False
    if field_sel and not field_selector_matches(field_sel, obj):
        return False
    if label_sel and not label_selector_matches(label_sel, obj):
        return False
    return True


# ---- the store -------------------------------------------------------------------------------

class Store:
    """Thread-safe objects + history. ``cond`` wakes watchers on every write."""

    def __init__(self, first_rv: int = 1000) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = first_rv
        self.compacted_rv = first_rv
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: list[Event] = []

    @staticmethod
    def key(kind: Kind, namespace: Optional[str], name: str) -> tuple[str, str, str]:
        return (kind.plural, (namespace or "") if kind.namespaced else "", name)

    def _stamp(self, kind: Kind, obj: Obj, prev: Optional[Obj]) -> Obj:
        obj = copy.deepcopy(obj)
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        meta = obj.setdefault("metadata", {})
        if not kind.namespaced:
            meta.pop("namespace", None)
        elif not meta.get("namespace"):
            meta["namespace"] = "default"
        if prev is not None:
            meta["uid"] = prev["metadata"]["uid"]
            meta["creationTimestamp"] = prev["metadata"]["creationTimestamp"]
            meta["generation"] = prev["metadata"].get("generation", 1) + (
                1 if obj.get("spec") != prev.get("spec") else 0
            )
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta.setdefault("generation", 1)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        return obj

    def _record(self, kind: Kind, etype: str, obj: Obj, prev: Optional[Obj]) -> None:
        self.history.append(Event(self.rv, kind.plural, etype, copy.deepcopy(obj), copy.deepcopy(prev)))
        self.cond.notify_all()

    def get(self, kind: Kind, namespace: Optional[str], name: str) -> Obj:
        with self.lock:
            obj = self.objects.get(self.key(kind, namespace, name))
            if obj is None:
                raise NotFound(name)
            return copy.deepcopy(obj)

    def list(self, kind: Kind, namespace: Optional[str], field_sel: str = "", label_sel: str = "") -> tuple[int, list[Obj]]:
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (plural, _, _), o in sorted(self.objects.items())
                if plural == kind.plural and matches(o, namespace, field_sel, label_sel)
            ]
            return self.rv, items

    def upsert(self, kind: Kind, obj: Obj, *, create_only: bool = False, check_rv: bool = False) -> Obj:
        """Create or replace. ``check_rv``: a set metadata.resourceVersion must equal the stored one."""
        meta = obj.get("metadata") or {}
        with self.lock:
            k = self.key(kind, meta.get("namespace") or "default", meta["name"])
            prev = self.objects.get(k)
            if prev is not None and create_only:
                raise Conflict("exists")
            if prev is None and check_rv and not create_only:
                raise NotFound(meta["name"])
            if prev is not None and check_rv and meta.get("resourceVersion") not in (None, "", prev["metadata"]["resourceVersion"]):
                raise Conflict("resourceVersion")
            new = self._stamp(kind, obj, prev)
            self.objects[k] = new
            self._record(kind, "MODIFIED" if prev is not None else "ADDED", new, prev)
            return copy.deepcopy(new)

    def delete(self, kind: Kind, namespace: Optional[str], name: str) -> Obj:
        with self.lock:
            k = self.key(kind, namespace, name)
            prev = self.objects.pop(k, None)
            if prev is None:
                raise NotFound(name)
            gone = copy.deepcopy(prev)
            self.rv += 1
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(kind, "DELETED", gone, prev)
            return gone

    def compact(self) -> int:
        """Forget the history: every resourceVersion before now becomes too old for a watch."""
        with self.lock:
            self.compacted_rv = self.rv
            self.history.clear()
            self.cond.notify_all()
            return self.compacted_rv

    def events_after(self, rv: int, plural: str) -> list[Event]:
        with self.lock:
            return [e for e in self.history if e.rv > rv and e.plural == plural]
