"""Function specifications: what the decorators of :class:`~croupier.Agent` record, the
class-based form (:func:`service` and :func:`method`), and the descriptors registered with the
server.

The class-based form groups methods on a service object; each method becomes the function
``<service>.<method>``::

    @croupier.service("logic")
    class LogicService:
        @croupier.method(timeout=3.0, description="Get a player")
        async def get_player_info(self, player_id: str) -> PlayerInfo: ...

    agent.add_service(LogicService())     # registers logic.get_player_info
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from ._structs import to_struct
from .common.v1 import common_pb2
from .errors import ConfigError
from .schema import Signature, derive

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

_METHOD_ATTR = "__croupier_method__"
_SERVICE_ATTR = "__croupier_service__"


@dataclass(frozen=True)
class Options:
    """What a decorator says about a function besides its handler."""

    #: Default timeout in seconds (the descriptor's ``semantics.timeout``, rounded up).
    timeout: float | None = None
    #: One-paragraph description; default: the first paragraph of the docstring.
    description: str | None = None
    #: Human-readable name; default: the function id.
    name: str = ""
    #: Free-form category, e.g. ``"player"``.
    category: str = ""
    #: ``"query"`` (reads only, safe to repeat) or ``"command"`` (the default).
    kind: str = ""
    #: True when executing twice has the effect of executing once.
    idempotent: bool = False
    #: Version of the function as implemented here.
    version: str = ""
    #: Roles allowed to invoke (empty: all).
    allowed_roles: Sequence[str] = ()
    #: Identities allowed to invoke (empty: all).
    allowed_identities: Sequence[str] = ()
    #: Top-level payload fields masked in the server's audit log.
    sensitive_fields: Sequence[str] = ()
    #: Display name for user interfaces.
    display_name: str = ""
    #: True for a job function.
    job: bool = False


@dataclass
class FunctionSpec:
    """A registered function: its id, handler, signature and descriptor."""

    function_id: str
    handler: Callable[..., Any]
    signature: Signature
    options: Options
    descriptor: common_pb2.FunctionDescriptor = field(init=False)

    def __post_init__(self) -> None:
        self.descriptor = build_descriptor(self)

    @property
    def is_job(self) -> bool:
        """True for a job function."""
        return self.options.job


def _doc(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def build_descriptor(spec: FunctionSpec) -> common_pb2.FunctionDescriptor:
    """The descriptor registered for ``spec``, with the derived schemas."""
    o = spec.options
    d = common_pb2.FunctionDescriptor(
        id=spec.function_id,
        name=o.name or spec.function_id,
        category=o.category,
        version=o.version,
        description=o.description if o.description is not None else _doc(spec.handler),
    )
    d.params_schema.CopyFrom(to_struct(spec.signature.params_schema))
    d.result_schema.CopyFrom(to_struct(spec.signature.result_schema))
    d.semantics.kind = o.kind
    d.semantics.idempotent = o.idempotent
    d.semantics.job = o.job
    if o.timeout is not None:
        if o.timeout <= 0:
            raise ConfigError(f"{spec.function_id}: timeout must be positive, not {o.timeout}")
        d.semantics.timeout = math.ceil(o.timeout)
    if o.allowed_roles or o.allowed_identities or o.sensitive_fields:
        d.auth.allowed_roles.extend(o.allowed_roles)
        d.auth.allowed_identities.extend(o.allowed_identities)
        d.auth.sensitive_fields.extend(o.sensitive_fields)
    if o.display_name:
        d.ui.display_name = o.display_name
    return d


def make_spec(function_id: str, handler: Callable[..., Any], options: Options) -> FunctionSpec:
    """Derives the signature of ``handler`` and builds its spec."""
    if not callable(handler):
        raise ConfigError(f"{function_id}: the handler is not callable")
    return FunctionSpec(function_id, handler, derive(handler), options)


@overload
def method(fn: F, /) -> F: ...


@overload
def method(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    description: str | None = None,
    kind: str = "",
    idempotent: bool = False,
    job: bool = False,
    version: str = "",
    category: str = "",
) -> Callable[[F], F]: ...


def method(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    description: str | None = None,
    kind: str = "",
    idempotent: bool = False,
    job: bool = False,
    version: str = "",
    category: str = "",
) -> F | Callable[[F], F]:
    """Marks a method of a :func:`service` class as a function ``<service>.<name>`` (``name``
    defaults to the method's name). Usable bare (``@method``) or with options; ``job=True``
    makes it a job, whose handler takes a :class:`~croupier.JobContext` parameter."""

    def mark(f: F) -> F:
        opts = Options(
            timeout=timeout,
            description=description,
            kind=kind,
            idempotent=idempotent,
            job=job,
            version=version,
            category=category,
        )
        setattr(f, _METHOD_ATTR, (name or f.__name__, opts))
        return f

    return mark(fn) if fn is not None else mark


def service(name: str) -> Callable[[C], C]:
    """Names a class whose :func:`method`-marked methods become functions ``name.<method>``."""

    def mark(cls: C) -> C:
        setattr(cls, _SERVICE_ATTR, name)
        return cls

    return mark


def service_specs(instance: object, name: str | None = None) -> list[FunctionSpec]:
    """The functions of a service object: its :func:`method`-marked methods, bound to it."""
    cls = type(instance)
    svc = name or getattr(cls, _SERVICE_ATTR, None)
    if not svc:
        raise ConfigError(f"{cls.__name__} is not a @croupier.service class and no name was given")
    specs = []
    for attr in dir(cls):
        member = getattr(cls, attr, None)
        marked = getattr(member, _METHOD_ATTR, None)
        if marked is None:
            continue
        mname, opts = marked
        bound = getattr(instance, attr)
        if opts.category == "":
            opts = Options(**{**opts.__dict__, "category": svc})
        specs.append(make_spec(f"{svc}.{mname}", bound, opts))
    if not specs:
        raise ConfigError(f"{cls.__name__} has no @croupier.method methods")
    return specs
