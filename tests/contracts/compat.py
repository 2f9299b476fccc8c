"""Backward compatibility of an event schema version against an earlier text of the same version.

The rule (docs/event-catalog.md): a published version may only gain optional properties or widen
what it accepts. Everything an old event could hold must still validate, and nothing an old
event could leave out may become required.
"""

from typing import Any


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported, got {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if declared is None:
        return None
    return set(declared) if isinstance(declared, list) else {declared}


def _allowed_values(node: dict[str, Any]) -> set | None:
    if "const" in node:
        return {_hashable(node["const"])}
    if "enum" in node:
        return {_hashable(v) for v in node["enum"]}
    return None


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons why ``new`` would reject an event that ``old`` accepted; empty if none."""
    problems: list[str] = []
    _compare(old, new, old, new, "<root>", problems)
    return problems


def _compare(old: Any, new: Any, old_root: dict, new_root: dict, path: str, problems: list[str]) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    old_types, new_types = _types(old), _types(new)
    if old_types is not None and new_types is not None and not old_types <= new_types:
        problems.append(f"{path}: type narrowed from {sorted(old_types)} to {sorted(new_types)}")
    old_values, new_values = _allowed_values(old), _allowed_values(new)
    if new_values is not None and (old_values is None or not old_values <= new_values):
        lost = sorted(map(str, (old_values or set()) - new_values)) if old_values is not None else "any value"
        problems.append(f"{path}: allowed values narrowed (no longer accepts {lost})")
    for keyword in ("pattern", "format"):
        if keyword in new and new.get(keyword) != old.get(keyword):
            problems.append(f"{path}: {keyword} changed from {old.get(keyword)!r} to {new[keyword]!r}")
    for keyword in ("minLength", "minimum", "minItems"):
        if keyword in new and new[keyword] > old.get(keyword, float("-inf")):
            problems.append(f"{path}: {keyword} raised to {new[keyword]}")
    for keyword in ("maxLength", "maximum", "maxItems"):
        if keyword in new and new[keyword] < old.get(keyword, float("inf")):
            problems.append(f"{path}: {keyword} lowered to {new[keyword]}")
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    if newly_required:
        problems.append(f"{path}: newly required {sorted(newly_required)}")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, old_prop in old_props.items():
        if name not in new_props:
            if new.get("additionalProperties") is False:
                problems.append(f"{path}/{name}: property removed")
            continue
        _compare(old_prop, new_props[name], old_root, new_root, f"{path}/{name}", problems)
    if old.get("additionalProperties") is not False and new.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties closed")
    if "items" in old and "items" in new:
        _compare(old["items"], new["items"], old_root, new_root, f"{path}[]", problems)
    for keyword in ("then", "else"):
        if keyword in new and keyword in old:
            _compare(old[keyword], new[keyword], old_root, new_root, f"{path}({keyword})", problems)
