"""The contract's data shapes, shared by the REST API, the workers' events and pushes, and
the realtime gateway: one definition, so every channel sends the same JSON."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from models.accounts import User
from models.jobs import Job, Offer, Place


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _utc_z(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


Latitude = Annotated[float, Field(ge=-90, le=90), AfterValidator(_finite)]
Longitude = Annotated[float, Field(ge=-180, le=180), AfterValidator(_finite)]
UTCTime = Annotated[datetime, PlainSerializer(_utc_z, return_type=str)]


class StrictModel(BaseModel):
    """Request shapes: unknown fields and type coercion are errors, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        """PostgreSQL cannot store NUL in text, and would answer a 500 instead of a 422."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Coordinates(StrictModel):
    lat: Latitude
    lng: Longitude


class PlaceIn(Coordinates):
    address: str | None = Field(default=None, max_length=500)

    def to_place(self) -> Place:
        return Place(self.lat, self.lng, self.address)


class PlaceView(BaseModel):
    lat: float
    lng: float
    address: str | None = None


class PersonView(BaseModel):
    id: int
    name: str


class UserView(BaseModel):
    id: int
    role: str
    email: str
    name: str

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(id=user.id, role=user.role, email=user.email, name=user.name)


class JobView(BaseModel):
    id: int
    status: str = Field(json_schema_extra={"enum": ["pending", "accepted", "cancelled", "expired"]})
    pickup: PlaceView
    dropoff: PlaceView | None
    notes: str | None
    customer: PersonView
    driver: PersonView | None
    created_at: UTCTime
    accepted_at: UTCTime | None
    expires_at: UTCTime

    @classmethod
    def of(cls, job: Job) -> JobView:
        dropoff = job.dropoff
        return cls(
            id=job.id,
            status=job.status,
            pickup=PlaceView(**vars(job.pickup)),
            dropoff=PlaceView(**vars(dropoff)) if dropoff else None,
            notes=job.notes,
            customer=PersonView(id=job.customer.id, name=job.customer.name),
            driver=PersonView(id=job.driver.id, name=job.driver.name) if job.driver else None,
            created_at=job.created_at,
            accepted_at=job.accepted_at,
            expires_at=job.expires_at,
        )


class OfferView(BaseModel):
    job: JobView
    distance_km: float
    offered_at: UTCTime

    @classmethod
    def of(cls, offer: Offer) -> OfferView:
        return cls(
            job=JobView.of(offer.job),
            distance_km=round(offer.distance_km, 3),
            offered_at=offer.offered_at,
        )


def as_json(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a view: what REST answers and what events and pushes carry."""
    return model.model_dump(mode="json")


def field_reasons(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors as `{"field.path": "why"}`; errors about the whole body go under `body`."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "missing":
            reason = "required"
        elif err["type"] == "json_invalid":
            reason = "not valid JSON"
        elif err["type"] == "model_type" and path == "body":
            reason = "must be a JSON object"
        else:
            reason = err["msg"].removeprefix("Value error, ")
        fields.setdefault(path, reason)
    return fields
