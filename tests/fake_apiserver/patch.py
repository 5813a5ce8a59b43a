"""JSON merge patch (RFC 7386) and the part of strategic merge patch our callers send.

Why only part: the kubelet-style callers patch ``nodes/status`` (``volumesInUse``,
``conditions``, ``addresses``, annotations, labels) and Events (``count``, ``lastTimestamp``).
Strategic merge differs from a merge patch in lists of objects that have a merge key
(conditions and addresses by ``type``, volumesAttached by ``name``) and in ``$``-directives;
``volumesInUse`` has no patch strategy in the real API, so it is replaced whole, as here.
"""

from __future__ import annotations

import copy
from typing import Any

# (parent path, list field) -> merge key, from the real API's patchMergeKey tags.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "volumesAttached"): "name",
    ("spec", "drivers"): "name",  # CSINode spec.drivers
    ("metadata", "ownerReferences"): "uid",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """A merge patch that merges keyed lists by their merge key and skips ``$`` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):  # $setElementOrder/..., $retainKeys, $patch: order/retain hints
            continue
        if v is None:
            out.pop(k, None)
            continue
        key = MERGE_KEYS.get(path[-1:] + (k,))
        if key and isinstance(v, list) and isinstance(out.get(k), list):
            merged = [copy.deepcopy(x) for x in out[k]]
            for item in v:
                if not isinstance(item, dict):
                    continue
                delete = item.get("$patch") == "delete"
                idx = next((i for i, x in enumerate(merged) if isinstance(x, dict) and x.get(key) == item.get(key)), None)
                if delete:
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append(strategic_merge_patch({}, item, path + (k,)))
                else:
                    merged[idx] = strategic_merge_patch(merged[idx], item, path + (k,))
            out[k] = merged
        else:
            out[k] = strategic_merge_patch(out.get(k), v, path + (k,))
    return out
