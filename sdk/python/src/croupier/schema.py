"""Typed handlers: the params and result JSON Schemas of a function derived from its type hints,
and the conversion of payloads into arguments and of return values into results.

- A handler whose one payload parameter is a pydantic model takes the payload as that model;
  the params schema is the model's.
- Otherwise each parameter (but the context) is a field of the payload: its annotation is its
  type (none means any JSON), its default makes it optional. Unknown fields are refused
  (``additionalProperties: false``) unless the handler takes ``**kwargs``, which then receives
  them.
- The result schema comes from the return annotation. A result that is not a JSON object
  travels as ``{"value": result}``, and its schema says so.

The server validates payloads against the params schema before they reach the agent, so a bad
payload is the caller's ``INVALID_ARGUMENT`` naming the field. Should one get through anyway, the
handler is not called and the caller gets a handler error ``INVALID_ARGUMENT`` naming the field.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .errors import ConfigError, HandlerError


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_context(t: Any, name: str) -> bool:
    from .context import CallContext

    if isinstance(t, type) and issubclass(t, CallContext):
        return True
    return t is inspect.Parameter.empty and name == "ctx"


def _object_schema(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "object" or "$ref" in schema:
        return True
    return bool(schema.get("properties"))


def validation_message(e: pydantic.ValidationError) -> str:
    """A pydantic error as ``at /field: message; ...`` (JSON pointers, like the server)."""
    parts = []
    for err in e.errors()[:5]:
        loc = "/" + "/".join(str(x) for x in err.get("loc", ()))
        parts.append(f"at {loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


@dataclass
class Signature:
    """How to call one handler and what its schemas are."""

    #: The handler's name, for messages.
    name: str
    #: The JSON Schema of payloads.
    params_schema: dict[str, Any]
    #: The JSON Schema of results.
    result_schema: dict[str, Any]
    #: Name of the parameter that receives the context, if any.
    context_param: str | None
    #: True when the handler is a coroutine function.
    is_async: bool
    _model: type[BaseModel] | None = None
    _model_param: str | None = None
    _fields_model: type[BaseModel] | None = None
    _kwargs: bool = False
    _result: TypeAdapter[Any] | None = None
    _params: list[str] = field(default_factory=list)

    def arguments(self, payload: Mapping[str, Any], function_id: str) -> dict[str, Any]:
        """The keyword arguments for ``payload``; ``HandlerError("INVALID_ARGUMENT")`` naming
        the field when it does not fit."""
        try:
            if self._model is not None and self._model_param is not None:
                return {self._model_param: self._model.model_validate(dict(payload))}
            assert self._fields_model is not None
            m = self._fields_model.model_validate(dict(payload))
        except pydantic.ValidationError as e:
            raise HandlerError(
                "INVALID_ARGUMENT",
                f"payload does not fit the parameters of {function_id}: {validation_message(e)}",
            ) from None
        args = {name: getattr(m, name) for name in self._params}
        if self._kwargs and m.model_extra:
            args.update(m.model_extra)
        return args

    def result(self, value: Any) -> Any:
        """The handler's return value as JSON-compatible data."""
        if self._result is not None:
            return self._result.dump_python(value, mode="json")
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return _ANY.dump_python(value, mode="json")


def derive(fn: Callable[..., Any]) -> Signature:
    """Reads the signature and type hints of ``fn``."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 — a forward reference that does not resolve
        raise ConfigError(f"cannot read the type hints of {name}: {e}") from e
    sig = inspect.signature(fn)
    context_param: str | None = None
    fields: dict[str, Any] = {}
    names: list[str] = []
    kwargs = False
    for p in sig.parameters.values():
        ann = hints.get(p.name, inspect.Parameter.empty)
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise ConfigError(f"{name}: parameter {p.name} must be passable by keyword")
        if context_param is None and _is_context(ann, p.name):
            context_param = p.name
            continue
        t = Any if ann is inspect.Parameter.empty else ann
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (t, default)
        names.append(p.name)

    out = Signature(
        name=name,
        params_schema={},
        result_schema={},
        context_param=context_param,
        is_async=inspect.iscoroutinefunction(fn),
        _params=names,
        _kwargs=kwargs,
    )
    only = fields[names[0]][0] if len(names) == 1 else None
    if only is not None and _is_model(only) and not kwargs:
        out._model, out._model_param = only, names[0]
        out.params_schema = only.model_json_schema(mode="validation")
    else:
        config = ConfigDict(extra="allow" if kwargs else "forbid", arbitrary_types_allowed=False)
        try:
            model = pydantic.create_model(
                f"{fn.__name__}_params", __config__=config, **fields
            )
        except (pydantic.PydanticSchemaGenerationError, TypeError) as e:
            raise ConfigError(f"{name}: cannot derive a schema from its parameters: {e}") from e
        out._fields_model = model
        schema = model.model_json_schema(mode="validation")
        schema.pop("title", None)
        out.params_schema = schema

    ret = hints.get("return", inspect.Parameter.empty)
    if ret is inspect.Parameter.empty or ret is Any:
        out.result_schema = {}
    else:
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(ret)
            rs = adapter.json_schema(mode="serialization")
        except (pydantic.PydanticSchemaGenerationError, TypeError) as e:
            raise ConfigError(f"{name}: cannot derive a schema from its return type: {e}") from e
        out._result = adapter
        if ret is type(None):
            rs = {"type": "null"}
        if not _object_schema(rs):
            defs = rs.pop("$defs", None)
            rs = {
                "type": "object",
                "properties": {"value": rs},
                "required": ["value"],
            }
            if defs:
                rs["$defs"] = defs
        out.result_schema = rs
    return out
