"""HTTP request bodies and response envelopes; the shared shapes come from models.schemas."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.jobs import JobStatus
from models.schemas import (
    NUL_REASON,
    Coordinates,
    DriverEventView,
    JobEventView,
    JobView,
    OfferView,
    OpsDriverView,
    OpsJobView,
    PlaceIn,
    StrictModel,
    UserView,
)

# The patterns below are the validation itself (pydantic checks them) and what the OpenAPI
# document shows, so the two cannot drift apart. They avoid `\s`, which means different
# characters to the server's regex engine (Rust), to Python and to JavaScript: SPACE is
# Unicode's White_Space, which is also exactly what `strip_whitespace` strips.
SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK_PATTERN = rf"^[^\x00]*[^{SPACE}\x00][^\x00]*$"
# Surrounding space is allowed (and stripped); inside, no space, no NUL.
EMAIL_PATTERN = rf"^[{SPACE}]*[^@{SPACE}\x00]+@[^@{SPACE}\x00]+\.[^@{SPACE}\x00]+[{SPACE}]*$"


def _pattern_reason(reason: str) -> WrapValidator:
    """Answer a pattern mismatch with `reason` rather than pydantic's "should match
    pattern '…'", which shows the client a regular expression."""

    def explain(value: Any, handler: ValidatorFunctionWrapHandler, _: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(err["type"] == "string_pattern_mismatch" for err in exc.errors()):
                nul = isinstance(value, str) and "\x00" in value  # the patterns' other half
                raise PydanticCustomError(
                    "string_pattern_mismatch", NUL_REASON if nul else reason
                ) from exc
            raise

    return WrapValidator(explain)


@cache
def common_passwords() -> frozenset[str]:
    """The commonest leaked passwords of 8 characters or more (api/common_passwords.txt,
    from zxcvbn's list), lower-cased."""
    text = files("api").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _not_common(password: str) -> str:
    if password.casefold() in common_passwords():
        raise ValueError("is one of the most common passwords; choose another")
    return password


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=EMAIL_PATTERN),
    _pattern_reason("must be an email address"),
]
# A new password (registration): the login keeps accepting whatever was registered before.
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=128, pattern=NOT_BLANK_PATTERN),
    _pattern_reason("must not be blank"),
    AfterValidator(_not_common),
    Field(
        description="8 to 128 characters, not only spaces, and not one of the 11,611 "
        "commonest leaked passwords (compared case-insensitively)."
    ),
]
Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=120, pattern=NOT_BLANK_PATTERN
    ),
    _pattern_reason("must not be blank"),
]
# APNs device tokens are hex; today 32 bytes, but Apple says not to rely on the length.
DEVICE_TOKEN_PATTERN = r"^(?:[0-9a-fA-F]{2}){8,100}$"
DeviceTokenHex = Annotated[str, StringConstraints(pattern=DEVICE_TOKEN_PATTERN)]

# An Idempotency-Key: 1 to 255 printable characters, not only spaces. Header values reach
# the app as latin-1 text, so printable is spelt out over latin-1 (`str.isprintable()`: no
# control characters, no no-break space, no soft hyphen). The server strips the spaces and
# tabs around a value (HTTP's optional whitespace): clients cannot send leading ones, but
# trailing ones are allowed and dropped.
_KEY_VISIBLE = r"!-~\xa1-\xac\xae-\xff"
IDEMPOTENCY_KEY_PATTERN = rf"^[{_KEY_VISIBLE}](?:[ {_KEY_VISIBLE}]*[{_KEY_VISIBLE}])?[\t ]*$"
IdempotencyKey = Annotated[
    str,
    StringConstraints(max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN),
    _pattern_reason("must be 1 to 255 printable characters"),
]


class ParametersModel(BaseModel):
    """A view's header or query parameters. flask-openapi3 reads the model's JSON schema
    (`model_json_schema()`, without arguments) on every request it validates, to see which
    parameters are lists, and pydantic generates it afresh on each call: a tenth of a
    booking's CPU. It never changes, so it is generated once per model; read it, never
    change it. Calls with arguments (the OpenAPI document's) are pydantic's own."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        return _parameters_schema(cls)


@cache
def _parameters_schema(model: type[ParametersModel]) -> dict[str, Any]:
    return super(ParametersModel, model).model_json_schema()


def _without_default(schema: dict[str, Any]) -> None:
    del schema["default"]


class IdempotencyHeader(ParametersModel):
    """The header of a repeat-safe creation (the request's other headers are not ours)."""

    model_config = ConfigDict(extra="ignore")
    # Its schema is the key's alone: a header that is sent is a key, one that is not is None
    # (the parameter is not required), never a JSON null.
    key: Annotated[
        IdempotencyKey | None, WithJsonSchema(TypeAdapter(IdempotencyKey).json_schema())
    ] = Field(
        default=None,
        alias="Idempotency-Key",
        description="Repeat-safe creation: the same key within 24 h returns the first job "
        "and dispatches nothing again",
        json_schema_extra=_without_default,
    )


class JobPath(BaseModel):
    job_id: int


class DriverPath(BaseModel):
    driver_id: int


class DeviceTokenPath(BaseModel):
    token: str


class RegisterBody(StrictModel):
    role: Literal["customer", "driver"]
    email: Email
    password: Password
    name: Name


class LoginBody(StrictModel):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class DeviceBody(StrictModel):
    token: DeviceTokenHex
    platform: Literal["ios"]
    environment: Literal["production", "sandbox"]


class AvailabilityBody(StrictModel):
    online: bool


class LocationBody(Coordinates):
    pass


class JobCreateBody(StrictModel):
    pickup: PlaceIn
    dropoff: PlaceIn | None = None
    notes: str | None = Field(default=None, max_length=2000)


# Optional: no body at all (None from api.validation.JsonBodyRequest) stands for `{}`.
class CancelBody(StrictModel):
    # flask-openapi3 reads `openapi_extra` to document the body as optional.
    model_config = ConfigDict(openapi_extra={"required": False})  # type: ignore[typeddict-unknown-key]

    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="before")
    @classmethod
    def _absent_is_empty(cls, body: Any) -> Any:
        return {} if body is None else body


JobStatusName = Literal[
    "pending", "accepted", "arrived", "in_progress", "completed", "cancelled", "expired"
]
assert set(JobStatusName.__args__) == {s.value for s in JobStatus}  # type: ignore[attr-defined]


class JobsQuery(ParametersModel):
    model_config = ConfigDict(extra="ignore")
    status: JobStatusName | None = None

    def status_filter(self) -> JobStatus | None:
        """The one status asked for, or None for every status."""
        return JobStatus(self.status) if self.status else None


class OpsJobsQuery(JobsQuery):
    limit: int = Field(default=100, ge=1, le=500, description="At most this many, newest first")


class AuthAnswer(BaseModel):
    user: UserView
    token: str


class DeviceAnswer(BaseModel):
    token: str
    platform: str
    environment: str
    active: bool


class AvailabilityAnswer(BaseModel):
    online: bool


class OffersAnswer(BaseModel):
    offers: list[OfferView]


class JobsAnswer(BaseModel):
    jobs: list[JobView]


class JobEventsAnswer(BaseModel):
    events: list[JobEventView]


class DriverAnswer(BaseModel):
    id: int
    name: str
    online: bool
    approved: bool
    current_job: JobView | None


class OpsDriversAnswer(BaseModel):
    drivers: list[OpsDriverView]


class DriverEventsAnswer(BaseModel):
    events: list[DriverEventView]


class OpsJobsAnswer(BaseModel):
    jobs: list[OpsJobView]


class HealthAnswer(BaseModel):
    ok: bool


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
