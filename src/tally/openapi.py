"""The OpenAPI 3.1 document of the JSON API, generated, never written by hand.

Each :class:`Operation` names the handler that serves it and the pydantic
models that the handler checks its request with (query parameters, a JSON
body) and that describe its answer. :mod:`tally.api` builds its routes from
the same list, so a route cannot exist without being documented, and the
document is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from tally import __version__
from tally.api_models import Error
from tally.validation import Params

Endpoint = Callable[[Request], Awaitable[Response]]
REF = "#/components/schemas/{model}"
#: What any operation may answer besides its 200 (docs/http-api.md, "Errors").
ERRORS = {
    400: "The request is invalid; `field` names what is wrong.",
    401: "No operator token, or one that is unknown or revoked.",
    404: "No such product, person or route.",
    409: "In conflict with what is there (a product, a key or an active token of that name, "
    "a folder not empty).",
    503: "The store or the core cannot answer right now: retry.",
    504: "The query ran longer than `--query-timeout`.",
    507: "The query needed more memory than `--query-memory` allows.",
}
#: One event of a Server-Sent Events stream, as its fields.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # as Starlette routes it: {name} or {name:path}
    endpoint: Endpoint
    summary: str
    query: type[Params] | None = None
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    #: The answer's media types when it is not JSON (its schema: bytes).
    media_types: tuple[str, ...] = ()
    #: The body's media types when it is not JSON (it is streamed).
    body_media_types: tuple[str, ...] = ()
    #: The values of ``per_value`` that also answer ``text/csv`` when asked
    #: with ``Accept`` (a people search).
    csv_values: tuple[str, ...] = ()
    #: One documented operation per value of a path parameter, each with its
    #: own body and answer (the reports: ``{kind}``).
    per_value: dict[str, tuple[type[BaseModel] | None, type[BaseModel] | None]] = field(
        default_factory=dict
    )
    #: Needs no operator token (the document itself).
    public: bool = False


def document(operations: list[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    expanded = [variant for op in operations for variant in _expand(op)]
    models: list[type[BaseModel]] = [Error]
    for op in expanded:
        models += [m for m in (op.body, op.answer) if m is not None and m not in models]
    refs, schemas = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    names = {m: refs[(m, "validation")]["$ref"] for m in models}
    paths: dict[str, dict[str, Any]] = {}
    for op in expanded:
        path = _PATH_PARAM.sub(r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, path, names)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": __version__,
            "description": "The JSON API of Tally (docs/http-api.md, docs/reports.md). "
            'Every error is `{"error": {"code", "message", "field"?}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"operatorToken": []}],
    }


def _expand(op: Operation) -> list[Operation]:
    """``op`` once per value of its last path parameter, when it has ``per_value``."""
    if not op.per_value:
        return [op]
    name = _PATH_PARAM.findall(op.path)[-1]
    variants = []
    for value, (body, answer) in op.per_value.items():
        path = op.path.replace(f"{{{name}}}", value)
        csv = (value,) if value in op.csv_values else ()
        summary = f"{op.summary}: {value}"
        variants.append(replace(op, path=path, summary=summary, body=body, answer=answer,
                                csv_values=csv, per_value={}))  # fmt: skip
    return variants


def _operation(op: Operation, path: str, refs: dict[type[BaseModel], str]) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": refs[model]}

    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(mode="validation")
        for name, prop in schema["properties"].items():
            description = prop.pop("description", None)
            prop.pop("title", None)
            parameters.append({"name": name, "in": "query", "required": False,
                               "schema": prop} | ({"description": description}
                                                  if description else {}))  # fmt: skip
    if op.media_types:
        content = {media: {"schema": SSE_EVENT if media == "text/event-stream" else
                           {"type": "string"}} for media in op.media_types}  # fmt: skip
    else:
        content = {"application/json": {"schema": ref(op.answer) if op.answer else {}}}
    if op.csv_values:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status, meaning in ERRORS.items():
        responses[str(status)] = {
            "description": meaning,
            "content": {"application/json": {"schema": ref(Error)}},
        }
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}".rstrip("_"),
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": ref(op.body)}},
        }
    elif op.body_media_types:
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": {"type": "string"}} for media in op.body_media_types},
        }
    if op.public:
        operation["security"] = []
    return operation
