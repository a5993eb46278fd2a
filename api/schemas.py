"""HTTP request bodies and response envelopes; the shared shapes come from models.schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.jobs import JobStatus
from models.schemas import (
    Coordinates,
    JobEventView,
    JobView,
    OfferView,
    PlaceIn,
    StrictModel,
    UserView,
)

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
# APNs device tokens are hex; today 32 bytes, but Apple says not to rely on the length.
DEVICE_TOKEN_PATTERN = r"^(?:[0-9a-fA-F]{2}){8,100}$"
DeviceTokenHex = Annotated[str, StringConstraints(pattern=DEVICE_TOKEN_PATTERN)]


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


class CancelBody(StrictModel):
    reason: str | None = Field(default=None, max_length=500)


JobStatusName = Literal[
    "pending", "accepted", "arrived", "in_progress", "completed", "cancelled", "expired"
]
assert set(JobStatusName.__args__) == {s.value for s in JobStatus}  # type: ignore[attr-defined]


class JobsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: JobStatusName | None = None


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


class HealthAnswer(BaseModel):
    ok: bool


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
