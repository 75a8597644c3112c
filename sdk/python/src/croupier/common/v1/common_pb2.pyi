from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_NORMAL: _ClassVar[NodeState]
    NODE_STATE_MAINTENANCE: _ClassVar[NodeState]
    NODE_STATE_DISABLED: _ClassVar[NodeState]
NODE_STATE_NORMAL: NodeState
NODE_STATE_MAINTENANCE: NodeState
NODE_STATE_DISABLED: NodeState

class FunctionDescriptor(_message.Message):
    __slots__ = ("id", "name", "category", "params_schema", "result_schema", "auth", "semantics", "ui", "version", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESULT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    SEMANTICS_FIELD_NUMBER: _ClassVar[int]
    UI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    category: str
    params_schema: _struct_pb2.Struct
    result_schema: _struct_pb2.Struct
    auth: AuthConfig
    semantics: Semantics
    ui: UIConfig
    version: str
    description: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., params_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., auth: _Optional[_Union[AuthConfig, _Mapping]] = ..., semantics: _Optional[_Union[Semantics, _Mapping]] = ..., ui: _Optional[_Union[UIConfig, _Mapping]] = ..., version: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class AuthConfig(_message.Message):
    __slots__ = ("allowed_roles", "allowed_identities", "sensitive_fields", "approval")
    ALLOWED_ROLES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    SENSITIVE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    allowed_roles: _containers.RepeatedScalarFieldContainer[str]
    allowed_identities: _containers.RepeatedScalarFieldContainer[str]
    sensitive_fields: _containers.RepeatedScalarFieldContainer[str]
    approval: ApprovalConfig
    def __init__(self, allowed_roles: _Optional[_Iterable[str]] = ..., allowed_identities: _Optional[_Iterable[str]] = ..., sensitive_fields: _Optional[_Iterable[str]] = ..., approval: _Optional[_Union[ApprovalConfig, _Mapping]] = ...) -> None: ...

class ApprovalConfig(_message.Message):
    __slots__ = ("approvers", "count", "ttl")
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    approvers: str
    count: int
    ttl: str
    def __init__(self, approvers: _Optional[str] = ..., count: _Optional[int] = ..., ttl: _Optional[str] = ...) -> None: ...

class Semantics(_message.Message):
    __slots__ = ("kind", "idempotent", "timeout", "job")
    KIND_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    kind: str
    idempotent: bool
    timeout: int
    job: bool
    def __init__(self, kind: _Optional[str] = ..., idempotent: _Optional[bool] = ..., timeout: _Optional[int] = ..., job: _Optional[bool] = ...) -> None: ...

class UIConfig(_message.Message):
    __slots__ = ("display_name", "icon", "hints")
    class HintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ICON_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    icon: str
    hints: _containers.ScalarMap[str, str]
    def __init__(self, display_name: _Optional[str] = ..., icon: _Optional[str] = ..., hints: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeStateRecord(_message.Message):
    __slots__ = ("agent_id", "state", "reason", "actor", "changed_at", "applied_at")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    state: NodeState
    reason: str
    actor: str
    changed_at: int
    applied_at: int
    def __init__(self, agent_id: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., changed_at: _Optional[int] = ..., applied_at: _Optional[int] = ...) -> None: ...
