"""Input rules for every record, with the original's marshmallow messages kept verbatim."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate

from ims.domain import validation as rules
from ims.domain.errors import NoInput, ValidationFailed
from ims.domain.jobs import JOB_STATUSES, JOB_TYPES
from ims.domain.quick_load import quick_load

ARCHES = ("aarch64", "x86_64")
RECIPE_TYPES = ("kiwi-ng", "packer")
# sles12/sles15/centos7 are the original's; debian12 is ours, for the Debian recipe that ships with IMS.
LINUX_DISTRIBUTIONS = ("sles12", "sles15", "centos7", "debian12")

_blank_name = validate.Length(min=1, error="name field must not be blank")
_arch = validate.OneOf(ARCHES)


class ArtifactLinkSchema(Schema):
    class Meta:
        unknown = RAISE

    path = fields.Str(required=True, validate=_blank_name)
    etag = fields.Str(load_default="")
    type = fields.Str(required=True, validate=validate.OneOf(["s3"], error="Type must be one of: s3."))


class KeyValueSchema(Schema):
    class Meta:
        unknown = RAISE

    key = fields.Str(required=True)
    value = fields.Str(required=True)


class PublicKeyInput(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str(required=True, validate=_blank_name)
    public_key = fields.Str(
        required=True, validate=validate.Length(min=1, error="public_key field must not be blank")
    )


class RecipeInput(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str(required=True, validate=_blank_name)
    recipe_type = fields.Str(
        required=True,
        validate=validate.OneOf(RECIPE_TYPES, error="Recipe type must be one of: kiwi-ng, packer."),
    )
    linux_distribution = fields.Str(
        required=True,
        validate=validate.OneOf(
            LINUX_DISTRIBUTIONS, error="Recipe type must be one of: " + ", ".join(LINUX_DISTRIBUTIONS) + "."
        ),
    )
    link = fields.Nested(ArtifactLinkSchema, allow_none=True, load_default=None)
    template_dictionary = fields.List(fields.Nested(KeyValueSchema), allow_none=True, load_default=list)
    require_dkms = fields.Bool(load_default=True)
    arch = fields.Str(load_default="x86_64", validate=_arch)


class RecipePatch(Schema):
    class Meta:
        unknown = RAISE

    # Ours: rename (the original has no way to change a name).
    name = fields.Str(validate=_blank_name)
    link = fields.Nested(ArtifactLinkSchema)
    arch = fields.Str(validate=_arch)
    require_dkms = fields.Bool()
    template_dictionary = fields.List(fields.Nested(KeyValueSchema))


class ImageInput(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str(required=True, validate=_blank_name)
    link = fields.Nested(ArtifactLinkSchema, allow_none=True, load_default=None)
    arch = fields.Str(load_default="x86_64", validate=_arch)
    metadata = fields.Dict(keys=fields.Str(), values=fields.Str(), load_default=dict)

    @staticmethod
    def pre_load_changes(data: Any) -> bool:
        """Whether the pre_load hook below rewrites `data` (ims.domain.quick_load leaves those to marshmallow)."""
        return isinstance(data, dict) and isinstance(data.get("metadata"), dict) and "key" in data["metadata"]

    @pre_load
    def _key_value_metadata(self, data: Any, **_: Any) -> Any:
        # The original accepts `{key, value}` and stores it as `{key: value}`.
        if self.pre_load_changes(data):
            meta = data["metadata"]
            data = dict(data, metadata={meta["key"]: meta.get("value", "")})
        return data


class MetadataOperation(Schema):
    class Meta:
        unknown = RAISE

    operation = fields.Str(required=True, validate=validate.OneOf(["set", "remove"]))
    key = fields.Str(required=True)
    value = fields.Str(load_default="")


class ImagePatch(Schema):
    class Meta:
        unknown = RAISE

    # Ours: rename (the original has no way to change a name).
    name = fields.Str(validate=_blank_name)
    link = fields.Nested(ArtifactLinkSchema)
    arch = fields.Str(validate=_arch)
    metadata = fields.Nested(MetadataOperation)


class UndeleteInput(Schema):
    class Meta:
        unknown = RAISE

    operation = fields.Str(
        required=True, validate=validate.OneOf(["undelete"], error="Recipe type must be one of: undelete.")
    )


class RemoteBuildNodeInput(Schema):
    class Meta:
        unknown = RAISE

    xname = fields.Str(required=True, validate=_blank_name)


class SshContainerInput(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str()
    jail = fields.Bool(load_default=False)


_size_rule = [
    validate.Range(min=1, error="build_env_size must be greater than or equal to 1"),
    validate.Range(max=rules.SIZE_GIB_MAX, error=f"Sizes must be at most {rules.SIZE_GIB_MAX} (GiB)."),
]


class JobInput(Schema):
    class Meta:
        unknown = RAISE

    job_type = fields.Str(
        required=True, validate=validate.OneOf(JOB_TYPES, error="Job type must be one of: create, customize.")
    )
    artifact_id = fields.UUID(required=True)
    public_key_id = fields.UUID(required=True)
    image_root_archive_name = fields.Str(
        required=True, validate=validate.Length(min=1, error="image_root_archive_name field must not be blank")
    )
    enable_debug = fields.Bool(load_default=False)
    build_env_size = fields.Int(validate=_size_rule)
    job_mem_size = fields.Int(validate=_size_rule)
    kernel_file_name = fields.Str(load_default="")
    initrd_file_name = fields.Str(load_default="initrd", validate=validate.Length(min=1))
    kernel_parameters_file_name = fields.Str(load_default="kernel-parameters", validate=validate.Length(min=1))
    ssh_containers = fields.List(fields.Nested(SshContainerInput), allow_none=True, load_default=None)
    require_dkms = fields.Bool(load_default=True)


class JobPatch(Schema):
    class Meta:
        unknown = RAISE

    status = fields.Str(
        validate=validate.OneOf(JOB_STATUSES, error="Job state must be one of: " + ", ".join(JOB_STATUSES) + ".")
    )
    resultant_image_id = fields.UUID(allow_none=True)
    # Ours: a readable reason for the status (set by the job's stages or the reconciler).
    status_reason = fields.Str(allow_none=True)


# One instance per schema class: building one deep-copies its declared fields, a tenth of a small write's
# CPU. load() keeps no state on the instance, so threads share them.
_INSTANCES: dict[type[Schema], Schema] = {}


def load_input(schema_class: type[Schema], body: Any) -> dict[str, Any]:
    """Validate a request body: a falsy body is 'No input provided', anything else goes to the schema."""
    schema = _INSTANCES.get(schema_class)
    if schema is None:
        schema = _INSTANCES.setdefault(schema_class, schema_class())
    if not body:
        raise NoInput()
    nul = rules.nul_fields(body)
    if nul:
        raise ValidationFailed(_nested({where: ["Must not contain a NUL character."] for where in nul}))
    result = quick_load(schema, body)
    if result is None:
        try:
            result = schema.load(body)
        except ValidationError as exc:
            raise ValidationFailed(exc.messages) from None
    errors = request_rule_errors(schema, result)
    if errors:
        raise ValidationFailed(errors)
    return result


def _check_link(link: Any) -> dict[str, list[str]] | None:
    if isinstance(link, dict) and isinstance(link.get("path"), str):
        message = rules.check_s3_path(link["path"])
        if message is not None:
            return {"path": [message]}
    return None


# Rules for requests only (stored records imported from the original's data files keep what they have):
# field -> check of the loaded value, returning an error message or None.
_STR_RULES: dict[str, dict[str, Any]] = {
    "PublicKeyInput": {"name": rules.check_name, "public_key": rules.check_public_key},
    "RecipeInput": {"name": rules.check_name},
    "RecipePatch": {"name": rules.check_name},
    "ImageInput": {"name": rules.check_name},
    "ImagePatch": {"name": rules.check_name},
    "RemoteBuildNodeInput": {"xname": rules.check_xname},
    "JobInput": {"image_root_archive_name": lambda value: rules.check_name(value, "image_root_archive_name")},
}
_LINK_SCHEMAS = frozenset({"RecipeInput", "RecipePatch", "ImageInput", "ImagePatch"})


def request_rule_errors(schema: Schema, fields_: dict[str, Any]) -> dict[str, Any]:
    """The checks of ims.domain.validation on a loaded request body, in marshmallow's error shape."""
    name = type(schema).__name__
    errors: dict[str, Any] = {}
    for field, check in _STR_RULES.get(name, {}).items():
        value = fields_.get(field)
        if isinstance(value, str) and value:
            message = check(value)
            if message is not None:
                errors[field] = [message]
    if name in _LINK_SCHEMAS:
        link_errors = _check_link(fields_.get("link"))
        if link_errors:
            errors["link"] = link_errors
    return errors


def _nested(flat: dict[str, list[str]]) -> dict[str, Any]:
    """`{"link.path": [...]}` -> `{"link": {"path": [...]}}`, marshmallow's shape for nested fields."""
    result: dict[str, Any] = {}
    for dotted, messages in flat.items():
        *parents, last = dotted.split(".")
        place = result
        for part in parents:
            place = place.setdefault(part, {})
            if not isinstance(place, dict):
                break
        else:
            place[last] = messages
    return result


def load_stored(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    """Load a record from an original data file: unknown fields dropped, defaults applied."""
    result: dict[str, Any] = schema.load(body, unknown=EXCLUDE)
    return result
