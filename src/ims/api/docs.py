"""OpenAPI helpers: request bodies are parsed by hand (to keep the original's error bodies), so their
schemas are attached here and collected into the components."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ims.api import models

_DOCUMENTED: list[type[BaseModel]] = []

PROBLEM_JSON = "application/problem+json"

# Which body each error status carries: the original answers malformed JSON and a wrong Content-Type with
# Flask's plain `{"message": ...}`, everything else with problem+json.
_ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: (
        "Bad request: no input or a bad query value (problem+json), or malformed JSON (`{\"message\": ...}`).",
        (PROBLEM_JSON, "application/json"),
    ),
    404: ("No such record.", (PROBLEM_JSON,)),
    409: ("The record already has a different link.", (PROBLEM_JSON,)),
    413: ("The request body is too large.", (PROBLEM_JSON,)),
    415: ("The body is not application/json.", ("application/json",)),
    422: ("Input failed validation; `errors` names the fields.", (PROBLEM_JSON,)),
    500: ("S3 or the job runner failed; `errors` or `detail` says how.", (PROBLEM_JSON,)),
    503: ("The database or S3 is not available.", (PROBLEM_JSON,)),
}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to the model's schema, which is then published in the components."""
    if model not in _DOCUMENTED:
        _DOCUMENTED.append(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}},
    }


def error_response(status: int) -> dict[str, Any]:
    description, media_types = _ERRORS[status]
    content = {
        media_type: {"schema": ref(models.Problem if media_type == PROBLEM_JSON else models.Message)}
        for media_type in media_types
    }
    return {"description": description, "content": content}


def plain_response(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}}


def responses(
    status: int, model: type[BaseModel] | None = None, *, many: bool = False, errors: tuple[int, ...] = ()
) -> dict[int | str, dict[str, Any]]:
    result: dict[int | str, dict[str, Any]] = {}
    if model is None:
        result[status] = {"description": "Done; no body."}
    else:
        schema: dict[str, Any] = {"type": "array", "items": ref(model)} if many else ref(model)
        result[status] = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    for code in errors:
        result[code] = error_response(code)
    return result


def documented_schemas() -> dict[str, Any]:
    """JSON schemas of every model referenced above, nested models included, sorted by name."""
    schemas: dict[str, Any] = {}
    for model in list(_DOCUMENTED):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas[model.__name__] = schema
    return dict(sorted(schemas.items()))


TAG_DESCRIPTIONS = {
    "health": "Liveness, readiness and version; not behind the API gateway's authentication.",
    "public-keys": "SSH public keys that jobs install so a user can reach the job's SSH containers.",
    "recipes": "Kiwi-NG recipes (a tar.gz in S3) that create jobs build images from.",
    "images": "Boot images: a manifest in S3 listing the rootfs, kernel, initrd and boot parameters.",
    "jobs": "Create jobs (build an image from a recipe) and customize jobs (change an image over SSH).",
    "deleted public-keys": "Soft-deleted public keys: list, undelete or delete permanently (v3).",
    "deleted recipes": "Soft-deleted recipes; their S3 artifacts sit under the `deleted/` prefix (v3).",
    "deleted images": "Soft-deleted images; their S3 artifacts sit under the `deleted/` prefix (v3).",
    "remote-build-nodes": "Hosts that run jobs over SSH instead of in Kubernetes (v3).",
}

_AUTO_VALIDATION = "#/components/schemas/HTTPValidationError"
_TOO_LARGE = "#/components/responses/BodyTooLarge"
_BAD_QUERY = "#/components/responses/NulInQuery"


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill in what FastAPI's generator does not know about our error handling, tags and security."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(documented_schemas())
    components["responses"] = {
        "BodyTooLarge": error_response(413),
        "NulInQuery": {
            "description": "A NUL character in the query string (refused on every path).",
            "content": {PROBLEM_JSON: {"schema": ref(models.Problem)}},
        },
    }
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The API gateway in front of IMS checks a Keycloak token; IMS itself checks none.",
        }
    }
    # Anonymous access is allowed too: direct access (and the health paths) carry no token.
    schema["security"] = [{"bearerAuth": []}, {}]
    used_tags: list[str] = []
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            _fix_responses(operation)
            for tag in operation.get("tags", []):
                if tag not in used_tags:
                    used_tags.append(tag)
    schema["tags"] = [{"name": tag, "description": TAG_DESCRIPTIONS.get(tag, "")} for tag in used_tags]
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    components["schemas"] = dict(sorted(components["schemas"].items()))
    return schema


def _fix_responses(operation: dict[str, Any]) -> None:
    responses_ = operation.setdefault("responses", {})
    automatic = responses_.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if automatic.get("$ref") == _AUTO_VALIDATION:
        # Our handler answers a bad query or path value with a 400 problem, never FastAPI's 422 body.
        del responses_["422"]
        if "400" not in responses_ and any(_can_fail(p) for p in operation.get("parameters", [])):
            responses_["400"] = error_response(400)
    # The body size limit applies to every request, whatever its method; so does the NUL rule for queries.
    responses_["413"] = {"$ref": _TOO_LARGE}
    responses_.setdefault("400", {"$ref": _BAD_QUERY})
    operation["responses"] = dict(sorted(responses_.items()))


def _can_fail(parameter: dict[str, Any]) -> bool:
    """Whether parsing the parameter can fail: anything but a plain, unconstrained string."""
    schema = parameter.get("schema", {})
    options = schema.get("anyOf", [schema])
    plain = [{"type": "string"}, {"type": "null"}]
    return any({k: v for k, v in option.items() if k not in ("title", "description")} not in plain for option in options)
