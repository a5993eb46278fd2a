"""Request parsing: every body and query goes through a pydantic model, strictly."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import RequestInvalid
from models.schemas import field_reasons

M = TypeVar("M", bound=BaseModel)


def validated_body(model: type[M]) -> M:
    """The JSON body parsed into `model`. Malformed JSON, a non-object, unknown or missing
    fields and wrong types are all 422s that name the field; nothing is coerced."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise RequestInvalid({"body": "a JSON object is required"})
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestInvalid(field_reasons(exc)) from exc


def validated_query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise RequestInvalid(field_reasons(exc)) from exc


def optional_body(model: type[M]) -> M:
    """Like `validated_body`, but an empty body stands for `{}` (every field optional)."""
    if not request.get_data(cache=True).strip():
        return model()
    return validated_body(model)
