"""ims.domain.quick_load against marshmallow itself: whatever body it accepts, the schema accepts too and loads
to the same fields in the same order; the bodies clients send most do take it."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema

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
BODIES = st.one_of(st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=6), VALUES)


def ordered(value: Any) -> Any:
    """Dicts as lists of items, so that two results compare equal only in the same order."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def dicts_in(value: Any) -> list[int]:
    found = []
    if isinstance(value, dict):
        found.append(id(value))
        for item in value.values():
            found += dicts_in(item)
    return found


@pytest.mark.parametrize("schema_class", SCHEMAS, ids=lambda schema: schema.__name__)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_what_it_accepts_marshmallow_loads_the_same(schema_class: type[Schema], body: Any) -> None:
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
