"""Schemas for the OpenAPI document only; request rules live in ims.domain.schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ims.domain import validation as rules


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(**kwargs: Any) -> Any:
    """A field a PATCH may leave out but may not set to null: not nullable in the document."""
    return Field(default=None, json_schema_extra=_no_default, **kwargs)


def name_field(**kwargs: Any) -> Any:
    """A record name: 1 to NAME_MAX_LENGTH characters."""
    return Field(min_length=1, max_length=rules.NAME_MAX_LENGTH, **kwargs)

Arch = Literal["aarch64", "x86_64"]
JobType = Literal["create", "customize"]
JobStatus = Literal[
    "creating",
    "fetching_image",
    "fetching_recipe",
    "waiting_for_repos",
    "building_image",
    "packaging_artifacts",
    "waiting_on_user",
    "error",
    "success",
]


class ArtifactLink(BaseModel):
    """Where an artifact lives: `s3://bucket/key`."""

    path: str = Field(
        min_length=1,
        pattern=rules.S3_PATH_PATTERN,
        description="`s3://bucket/key`; a key of at most 1024 bytes without control characters.",
        examples=["s3://boot-images/1fb58f4e-ad23-489b-89b7-95868fca7ee6/manifest.json"],
    )
    etag: str = Field(default="", description="S3 ETag of the object when the link was made; may be empty.")
    type: Literal["s3"] = "s3"


class KeyValue(BaseModel):
    key: str
    value: str


class PublicKeyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = name_field()
    public_key: str = Field(
        min_length=1,
        max_length=rules.PUBLIC_KEY_MAX_LENGTH,
        description="One OpenSSH public key line (`<type> <base64> [comment]`, the .pub file); no options, "
        "no private key.",
    )


class PublicKeyRecord(PublicKeyInput):
    id: str
    created: str = Field(description="Naive UTC timestamp in ISO 8601 form, as the original writes it.")


class DeletedPublicKeyRecord(PublicKeyRecord):
    deleted: str


class RecipeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = name_field()
    recipe_type: Literal["kiwi-ng", "packer"]
    linux_distribution: Literal["sles12", "sles15", "centos7", "debian12"]
    link: ArtifactLink | None = None
    template_dictionary: list[KeyValue] | None = Field(default_factory=list)
    require_dkms: bool = True
    arch: Arch = "x86_64"


class RecipePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = optional(description="Ours: rename the recipe.", min_length=1, max_length=rules.NAME_MAX_LENGTH)
    link: ArtifactLink = optional()
    arch: Arch = optional()
    require_dkms: bool = optional()
    template_dictionary: list[KeyValue] = optional()


class RecipeRecord(RecipeInput):
    id: str
    created: str


class DeletedRecipeRecord(RecipeRecord):
    deleted: str


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = name_field()
    link: ArtifactLink | None = None
    arch: Arch = "x86_64"
    metadata: dict[str, str] = Field(default_factory=dict)


class MetadataOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operation: Literal["set", "remove"]
    key: str
    value: str = ""


class ImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = optional(description="Ours: rename the image.", min_length=1, max_length=rules.NAME_MAX_LENGTH)
    link: ArtifactLink = optional()
    arch: Arch = optional()
    metadata: MetadataOperation = optional()


class ImageRecord(ImageInput):
    id: str
    created: str


class DeletedImageRecord(ImageRecord):
    deleted: str


class UndeleteInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operation: Literal["undelete"]


class RemoteBuildNodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    xname: str = Field(
        min_length=1, max_length=253, pattern=r"^[^/\s]+$",
        description="A Cray xname (x3000c0s19b4n0), a host name or an IP address.",
    )


class RemoteBuildNodeRecord(RemoteBuildNodeInput):
    pass


class RemoteBuildNodeStatus(BaseModel):
    xname: str
    sshStatus: str  # noqa: N815 - wire name
    podmanStatus: str  # noqa: N815
    nodeArch: str  # noqa: N815
    numCurrentJobs: int  # noqa: N815
    ableToRunJobs: bool  # noqa: N815


class SshEndpoint(BaseModel):
    host: str
    port: int


class SshContainerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = optional()
    jail: bool = False


class SshContainer(SshContainerInput):
    status: str = "pending"
    connection_info: dict[str, SshEndpoint] = Field(
        default_factory=dict, description="`customer_access` and `cluster.local` endpoints that answer SSH."
    )


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_type: Literal["create", "customize"]
    artifact_id: str = Field(description="Recipe id (create) or image id (customize).")
    public_key_id: str
    image_root_archive_name: str = name_field(description="Name of the image the job makes.")
    enable_debug: bool = False
    build_env_size: int = Field(
        default=60, ge=1, le=rules.SIZE_GIB_MAX, description="GiB; default DEFAULT_IMS_IMAGE_SIZE."
    )
    job_mem_size: int = Field(
        default=8, ge=1, le=rules.SIZE_GIB_MAX, description="GiB; default DEFAULT_IMS_JOB_MEM_SIZE."
    )
    kernel_file_name: str = Field(default="", description="Defaults to `vmlinuz` (x86_64) or `Image` (aarch64).")
    initrd_file_name: str = Field(default="initrd", min_length=1)
    kernel_parameters_file_name: str = Field(default="kernel-parameters", min_length=1)
    ssh_containers: list[SshContainerInput] | None = None
    require_dkms: bool = True


class JobPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: JobStatus = optional()
    resultant_image_id: str | None = None
    status_reason: str | None = None


class JobRecord(BaseModel):
    id: str
    created: str
    job_type: Literal["create", "customize"]
    artifact_id: str
    public_key_id: str
    image_root_archive_name: str
    enable_debug: bool
    build_env_size: int
    job_mem_size: int = Field(description="Memory limit of the job in GiB (the original's spec left it out).")
    kernel_file_name: str
    initrd_file_name: str
    kernel_parameters_file_name: str = Field(
        description="Name of the kernel parameters file the job writes (the original's spec left it out)."
    )
    ssh_containers: list[SshContainer] | None
    require_dkms: bool
    status: JobStatus = Field(description="Includes `packaging_artifacts`, which the original's spec left out.")
    status_reason: str | None = Field(default=None, description="Ours: why the job is in its status.")
    arch: Arch
    resultant_image_id: str | None
    kubernetes_job: str | None
    kubernetes_service: str | None
    kubernetes_configmap: str | None
    kubernetes_pvc: str | None = Field(description="`cray-ims-<id>-job-claim` (the original's spec left it out).")
    kubernetes_secret: str | None = Field(
        description="`cray-ims-<id>-signing-keys`, or null when the keys were not copied (left out of the original's spec)."
    )
    kubernetes_namespace: str | None
    remote_build_node: str = Field(
        default="", description="Xname of the remote build node running the job, or empty (left out of the original's spec)."
    )


class Version(BaseModel):
    version: str


class Empty(BaseModel):
    """The liveness and readiness answer: `{}`."""

    model_config = ConfigDict(extra="forbid")


class Readiness(BaseModel):
    """Which dependency is down, when /healthz/ready answers 503."""

    database: bool
    s3: bool


class Problem(BaseModel):
    status: int
    title: str
    detail: str | None = None
    errors: dict[str, object] | list[object] | None = None


class Message(BaseModel):
    message: str
