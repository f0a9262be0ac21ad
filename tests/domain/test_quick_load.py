"""ims.domain.quick_load against marshmallow itself: whatever body it accepts, the schema accepts too and loads
to the same fields in the same order; the bodies clients send most do take it."""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields, validate

from ims.domain import schemas
from ims.domain.errors import ValidationFailed
from ims.domain.quick_load import quick_load

SCHEMAS = [
    value
    for value in vars(schemas).values()
    if inspect.isclass(value) and issubclass(value, Schema) and value.__module__ == schemas.__name__
]
FIELD_NAMES = sorted({name for schema in SCHEMAS for name in schema().fields} | {"bogus", "key", "value"})
WORDS = [
    "",
    "x",
    "image-1",
    "x86_64",
    "aarch64",
    "s3",
    "s3://boot-images/a/manifest.json",
    "set",
    "remove",
    "undelete",
    "kiwi-ng",
    "packer",
    "sles15",
    "debian12",
    "create",
    "customize",
    "success",
    "ssh-rsa AAAAB3NzaC1yc2E test",
    "2b9b8bb1-5f9e-4f5f-9a59-6a7f1c2f6d0e",
    "true",
    "1",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(WORDS),
    st.text(max_size=4),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=3), inner, max_size=4),
    ),
    max_leaves=12,
)


def member_values(field: fields.Field) -> st.SearchStrategy[Any]:
    """Values a member of this kind is usually given, and now and then anything at all."""
    if isinstance(field, fields.Nested) and isinstance(field.nested, type):
        plain = objects(field.nested)
    elif isinstance(field, fields.Dict):
        plain = st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=3), st.sampled_from(WORDS), max_size=3)
    elif isinstance(field, fields.Boolean):
        plain = st.booleans()
    else:
        choices = [choice for rule in field.validators if isinstance(rule, validate.OneOf) for choice in rule.choices]
        plain = st.sampled_from(choices) if choices else st.sampled_from(WORDS) | st.text(max_size=4)
    return st.one_of(plain, plain, SCALARS, VALUES)


@functools.cache
def objects(schema_class: type[Schema]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of the schema's own members, each present or not, and now and then one it does not know."""
    schema_fields = schema_class().fields
    members = {name: member_values(field) for name, field in schema_fields.items()}
    required = {name: members[name] for name, field in schema_fields.items() if field.required}
    optional = {name: members[name] for name in members if name not in required}
    known = st.one_of(
        st.fixed_dictionaries(required, optional=optional),  # type: ignore[arg-type]
        st.fixed_dictionaries({}, optional=members),  # type: ignore[arg-type]
    )
    unknown = st.dictionaries(st.just("bogus"), VALUES, min_size=1, max_size=1)
    return st.one_of(known, known, known, st.builds(lambda body, extra: {**body, **extra}, known, unknown))


@functools.cache
def bodies(schema_class: type[Schema]) -> st.SearchStrategy[Any]:
    """Mostly objects of the schema's own members (so that many are plain enough to take the quick path), some
    with members of other schemas, some not objects at all."""
    return st.one_of(
        objects(schema_class),
        objects(schema_class),
        st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=6),
        VALUES,
    )


def ordered(value: Any) -> Any:
    """Dicts as lists of items and every value with its type, so that two results compare equal only in the
    same order and with the same types (1 == True in Python; marshmallow's Boolean gives True)."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return type(value).__name__, value


def dicts_in(value: Any) -> list[int]:
    found = []
    if isinstance(value, dict):
        found.append(id(value))
        for item in value.values():
            found += dicts_in(item)
    return found


@pytest.mark.parametrize("schema_class", SCHEMAS, ids=lambda schema: schema.__name__)
# The strategies of nested schemas have long reprs, which hypothesis warns about once per schema.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_it_accepts_marshmallow_loads_the_same(schema_class: type[Schema], data: st.DataObject) -> None:
    body = data.draw(bodies(schema_class))
    schema = schema_class()
    original = copy.deepcopy(body)
    quick = quick_load(schema, body)
    assert body == original  # it changes nothing it was given
    if quick is None:
        return
    loaded = schema.load(copy.deepcopy(body))  # raises if marshmallow refuses what it accepted
    assert ordered(quick) == ordered(loaded)
    assert not set(dicts_in(quick)) & set(dicts_in(body))  # new objects, as marshmallow builds


COMMON = [
    (schemas.ImageInput, {"name": "img"}),
    (schemas.ImageInput, {"name": "img", "metadata": {"a": "b"}, "arch": "aarch64"}),
    (schemas.ImageInput, {"name": "img", "link": None}),
    (schemas.ImageInput, {"name": "img", "link": {"path": "s3://boot-images/x/manifest.json", "type": "s3"}}),
    (schemas.ImagePatch, {"metadata": {"operation": "set", "key": "k", "value": "v"}}),
    (schemas.ImagePatch, {"metadata": {"operation": "remove", "key": "k"}}),
    (schemas.ImagePatch, {"link": {"path": "s3://boot-images/x/manifest.json", "etag": "e", "type": "s3"}}),
    (schemas.ImagePatch, {"arch": "x86_64", "name": "renamed"}),
    (schemas.RecipeInput, {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
    (schemas.RecipePatch, {"require_dkms": False}),
    (schemas.PublicKeyInput, {"name": "k", "public_key": "ssh-ed25519 AAAA user@host"}),
    (schemas.JobPatch, {"status": "success"}),
    (schemas.UndeleteInput, {"operation": "undelete"}),
    (schemas.RemoteBuildNodeInput, {"xname": "x3000c0s1b0n0"}),
]


@pytest.mark.parametrize(("schema_class", "body"), COMMON, ids=lambda value: getattr(value, "__name__", ""))
def test_the_bodies_clients_send_most_take_it(schema_class: type[Schema], body: dict[str, Any]) -> None:
    quick = quick_load(schema_class(), body)
    assert quick is not None
    assert ordered(quick) == ordered(schema_class().load(copy.deepcopy(body)))


@pytest.mark.parametrize(
    ("schema_class", "body"),
    [
        (schemas.ImageInput, {"name": ""}),  # a validator refuses it
        (schemas.ImageInput, {"name": "img", "bogus": 1}),  # unknown member
        (schemas.ImageInput, {"metadata": {}}),  # required member missing
        (schemas.ImageInput, {"name": "img", "metadata": {"key": "k", "value": "v"}}),  # the pre_load hook's form
        (schemas.ImagePatch, {"metadata": {"operation": "upsert", "key": "k"}}),  # nested validator
        (schemas.RecipeInput, {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                               "require_dkms": "yes"}),  # a boolean marshmallow converts
        (schemas.RecipeInput, {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                               "template_dictionary": []}),  # a list field
        (schemas.JobInput, {"job_type": "create"}),  # UUID fields
    ],
)
def test_it_leaves_the_rest_to_marshmallow(schema_class: type[Schema], body: dict[str, Any]) -> None:
    assert quick_load(schema_class(), body) is None


def test_load_input_gives_the_same_results_and_errors_either_way() -> None:
    key_value = schemas.load_input(schemas.ImageInput, {"name": "img", "metadata": {"key": "k", "value": "v"}})
    assert key_value["metadata"] == {"k": "v"}
    with pytest.raises(ValidationFailed) as refused:
        schemas.load_input(schemas.ImageInput, {"name": ""})
    assert refused.value.errors == {"name": ["name field must not be blank"]}
