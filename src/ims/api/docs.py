"""OpenAPI helpers: request bodies are parsed by hand (to keep the original's error bodies), so their
schemas are attached here and collected into the components."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ims.api import models

_DOCUMENTED: list[type[BaseModel]] = []


def _ref(model: type[BaseModel]) -> dict[str, str]:
    if model not in _DOCUMENTED:
        _DOCUMENTED.append(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}},
    }


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref(models.Problem)}}}


def responses(
    status: int, model: type[BaseModel] | None = None, *, many: bool = False, errors: tuple[int, ...] = ()
) -> dict[int | str, dict[str, Any]]:
    result: dict[int | str, dict[str, Any]] = {}
    if model is None:
        result[status] = {"description": "Done; no body."}
    else:
        schema: dict[str, Any] = {"type": "array", "items": _ref(model)} if many else _ref(model)
        result[status] = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    descriptions = {
        400: "Bad request: no input, bad JSON or a bad query value.",
        404: "No such record.",
        409: "The record already has a different link.",
        413: "The request body is too large.",
        415: "The body is not application/json.",
        422: "Input failed validation; `errors` names the fields.",
        503: "The database or S3 is not available.",
    }
    for code in errors:
        result[code] = _problem(descriptions[code])
    return result


def documented_schemas() -> dict[str, Any]:
    """JSON schemas of every model referenced above, nested models included."""
    schemas: dict[str, Any] = {}
    for model in list(_DOCUMENTED):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas[model.__name__] = schema
    return schemas
