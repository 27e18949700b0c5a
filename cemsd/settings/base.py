"""The base of every configuration section model: one place for the rules every key obeys.

- unknown keys are refused (a typo is never dropped silently);
- numbers are finite: `inf` and `nan` are TOML numbers, but no setting means them
  (a retention of `inf` days or a range of [-inf, inf] only breaks later, at run time);
- a number is a number: pydantic turns `true` into 1 for an int or a float key (`port =
  true` would listen on port 1), so a boolean is refused wherever the key does not take one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # names of buses, devices, platforms
BOOLEAN_FOR_A_NUMBER = "expected a number, not true/false"
# The longest duration any setting may give: a century. More is a typo, and a span past
# year 9999 overflows the date arithmetic at run time ("timestamp out of range").
MAX_DAYS = 36_500.0
MAX_HOURS = MAX_DAYS * 24
MAX_SECONDS = MAX_HOURS * 3600


class NotANumber:
    """Stands for a true/false given where a number belongs: no type accepts it, so the
    schema reports it at its key; pydantic_problems words it with BOOLEAN_FOR_A_NUMBER."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # A model validator, not a field one: pydantic allows no 'before' validator on the
    # discriminator of a union (a bus's transport).
    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        marked = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is not None and takes_number(field.annotation) and \
                    not takes_bool(field.annotation):
                marked[key] = _mark_booleans(value)
        return marked


def _mark_booleans(value: Any) -> Any:
    if isinstance(value, bool):
        return NotANumber(value)
    if isinstance(value, list | tuple):
        return [_mark_booleans(v) for v in value]
    if isinstance(value, dict):
        return {k: _mark_booleans(v) for k, v in value.items()}
    return value


def takes_number(annotation: Any) -> bool:
    """Whether a type admits an int or a float somewhere (where pydantic would take a
    boolean for one); other types refuse a boolean with their own message."""
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(v, int | float) and not isinstance(v, bool)
                   for v in get_args(annotation))
    if origin is Annotated:
        return takes_number(get_args(annotation)[0])
    return any(takes_number(a) for a in get_args(annotation))


def takes_bool(annotation: Any) -> bool:
    """Whether a type admits a boolean somewhere: bool itself, Any, a nested model (it
    checks its own keys), a literal true/false, or a union or container of those."""
    if annotation is bool or annotation is Any:
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(v, bool) for v in get_args(annotation))
    if origin is Annotated:
        return takes_bool(get_args(annotation)[0])
    return any(takes_bool(a) for a in get_args(annotation))  # unions and containers


def _host_name(value: str) -> str:
    """A name the resolver can take: IDNA-encodable (no empty label, none over 63
    characters), no blanks. Refused here, a bad name cannot end a bus's task at its first
    poll with a UnicodeError."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} is not a host name (blanks or control characters)")
    try:
        value.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"{value!r} is not a valid host name: {exc.__cause__ or exc}") \
            from None
    return value


Host = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_host_name)]


def item_key(items: Sequence[Any], index: int) -> str:
    """How a problem names an item of a list section: by its name when it has a unique one
    (`buses[rs485-flow]`), else by its position (`buses[1]`)."""
    names = [_name_of(item) for item in items]
    name = names[index]
    return name if name is not None and names.count(name) == 1 else str(index)


def _name_of(item: Any) -> str | None:
    name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
    return name if isinstance(name, str) and NAME.fullmatch(name) else None
