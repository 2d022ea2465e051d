"""The Kubernetes stand-in held to the API's own schemas: every document it answers (objects, lists, `Status`
errors, watch events, /version) validates against the Kubernetes OpenAPI schemas that `kubernetes-validate`
ships, strict (no unknown fields), for the cluster's version: the same schemas tests/test_shipping.py
validates the manifests with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import Registry, Resource, schema_contents

KUBERNETES_VERSION = "1.34.0"  # the cluster's; tests/test_shipping.py validates the manifests with it too
WATCH_EVENT_TYPES = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"}
# Documents whose file is not named after kind-group-version (meta and version types).
_SPECIAL_SCHEMAS = {("v1", "Status"): "status-meta-v1", ("", "WatchEvent"): "watchevent-meta-v1"}


def _validate_with(schema_name: str, doc: Any) -> list[str]:
    directory = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    schema = schema_contents(f"{directory}/{schema_name}.json", KUBERNETES_VERSION)
    definitions = schema_contents(f"{directory}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def schema_errors(doc: Any) -> list[str]:
    """Why `doc`, as the API server would answer it, is not valid ([] when it is)."""
    if not isinstance(doc, dict):
        return [f"not a JSON object: {str(doc)[:80]}"]
    if set(doc) == {"type", "object"}:  # one event of a watch stream
        errors = [] if doc["type"] in WATCH_EVENT_TYPES else [f"watch event type {doc['type']!r}"]
        return errors + [f"watch {doc['type']}: {e}" for e in schema_errors(doc["object"])]
    if "kind" not in doc:
        if "gitVersion" in doc:
            return [f"/version: {e}" for e in _validate_with("info-pkg-version", doc)]
        return [f"no kind: {json.dumps(doc)[:120]}"]
    where = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '')}"
    special = _SPECIAL_SCHEMAS.get((doc.get("apiVersion", ""), doc["kind"]))
    if special:
        return [f"{where}: {e}" for e in _validate_with(special, doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    errors = []
    if re.fullmatch(r".+List", doc["kind"]):  # a list's items, as the objects they are
        item_kind = doc["kind"][: -len("List")]
        for index, item in enumerate(doc.get("items") or []):
            full = {"apiVersion": doc["apiVersion"], "kind": item_kind, **item}
            errors += [f"{where}[{index}] {e}" for e in schema_errors(full)]
    return errors


def answer_errors(answers: Iterable[bytes]) -> list[str]:
    """Every schema error in the documents a stand-in answered (each distinct document validated once)."""
    errors: list[str] = []
    for raw in set(answers):
        errors += schema_errors(json.loads(raw))
    return sorted(set(errors))
