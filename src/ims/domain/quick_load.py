"""A shorter way through a marshmallow schema for the plain bodies clients send most.

marshmallow builds and validates a small body in tens of µs, a sixth of a record write's CPU. Most bodies
are plain: strings, booleans, a map of strings, nested objects of the same. For such a body `quick_load`
returns what `schema.load` returns, field for field and in the same order; for anything else, including every
body the schema refuses, it returns None and the caller asks marshmallow, whose messages are the contract.
It only ever says "valid" when every rule marshmallow would apply to that body is one it checks here, so it
can decline freely but never accept what the schema refuses (tests/domain/test_quick_load.py compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields
from marshmallow.utils import missing

# "Decline this body": the caller goes to marshmallow.
_DECLINE = object()


@dataclass(frozen=True)
class _Field:
    name: str
    required: bool
    allow_none: bool
    load_default: Any
    validators: tuple[Callable[[Any], Any], ...]
    convert: Callable[[Any], Any] | None  # the value as the field loads it, or _DECLINE; None: always decline


@dataclass(frozen=True)
class _Plan:
    fields: tuple[_Field, ...]
    names: frozenset[str]
    # For a schema with a pre_load hook: whether the hook would change this body (then the plan declines).
    hook_changes: Callable[[dict[str, Any]], bool] | None


_PLANS: dict[type[Schema], _Plan | None] = {}


def quick_load(schema: Schema, body: Any) -> dict[str, Any] | None:
    """What `schema.load(body)` returns, when the body is plain enough to check here; None otherwise."""
    plan = _plan(type(schema))
    if plan is None:
        return None
    loaded = _load(plan, body)
    return None if loaded is _DECLINE else loaded


def _load(plan: _Plan, body: Any) -> Any:
    if type(body) is not dict or not plan.names.issuperset(body):
        return _DECLINE  # not an object, or a member the schema does not know (it raises on those)
    if plan.hook_changes is not None and plan.hook_changes(body):
        return _DECLINE
    loaded: dict[str, Any] = {}
    for field in plan.fields:
        value = body.get(field.name, missing)
        if value is missing:
            if field.required:
                return _DECLINE
            default = field.load_default
            if default is not missing:
                loaded[field.name] = default() if callable(default) else default
            continue
        if value is None:
            if not field.allow_none:
                return _DECLINE
            loaded[field.name] = None
            continue
        if field.convert is None:
            return _DECLINE
        value = field.convert(value)
        if value is _DECLINE:
            return _DECLINE
        for validator in field.validators:
            try:
                validator(value)
            except ValidationError:
                return _DECLINE
        loaded[field.name] = value
    return loaded


def _plan(schema_class: type[Schema]) -> _Plan | None:
    """The checks for one schema class, built on first use; None when the schema has rules not checked here."""
    if schema_class not in _PLANS:
        _PLANS[schema_class] = _build(schema_class)
    return _PLANS[schema_class]


def _build(schema_class: type[Schema]) -> _Plan | None:
    schema = schema_class()
    # marshmallow files a class's decorated methods (pre_load, post_load, validates, ...) under _hooks.
    hooks = {kind for kind, registered in schema_class._hooks.items() if registered}
    hook_changes = getattr(schema_class, "pre_load_changes", None)
    if hooks - {"pre_load"} or (hooks and hook_changes is None) or schema.unknown != RAISE:
        return None
    planned = []
    for name, field in schema.load_fields.items():
        if field.data_key not in (None, name) or field.attribute not in (None, name):
            return None
        planned.append(
            _Field(
                name=name,
                required=field.required,
                allow_none=field.allow_none,
                load_default=field.load_default,
                validators=tuple(field.validators),
                convert=_converter(field),
            )
        )
    return _Plan(tuple(planned), frozenset(schema.load_fields), hook_changes if hooks else None)


def _converter(field: fields.Field) -> Callable[[Any], Any] | None:
    """How a present, non-null value of this field loads; None for the kinds of field left to marshmallow."""
    kind = type(field)
    if kind is fields.String:
        return lambda value: value if type(value) is str else _DECLINE
    if kind is fields.Boolean:
        # marshmallow also takes "true", 1, "yes", ...: those go to it.
        return lambda value: value if type(value) is bool else _DECLINE
    if isinstance(field, fields.Dict) and kind is fields.Dict:
        return _string_map if _plain_string(field.key_field) and _plain_string(field.value_field) else None
    if isinstance(field, fields.Nested) and kind is fields.Nested and _whole_schema(field):
        assert isinstance(field.nested, type) and issubclass(field.nested, Schema)
        nested = _plan(field.nested)
        if nested is None:
            return None
        return lambda value: _load(nested, value)
    return None


def _whole_schema(field: fields.Nested) -> bool:
    """One object of a schema class, loaded with all its fields and its own `unknown` rule."""
    return (
        isinstance(field.nested, type)
        and issubclass(field.nested, Schema)
        and not field.many
        and not field.only
        and not field.exclude
        and field.unknown is None
    )


def _plain_string(field: fields.Field | None) -> bool:
    return field is not None and type(field) is fields.String and not field.validators


def _string_map(value: Any) -> Any:
    if type(value) is not dict:
        return _DECLINE
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            return _DECLINE
    return dict(value)
