from croupier.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADDED: _ClassVar[EventType]
    UPDATED: _ClassVar[EventType]
    REMOVED: _ClassVar[EventType]
    SYNCED: _ClassVar[EventType]
ADDED: EventType
UPDATED: EventType
REMOVED: EventType
SYNCED: EventType

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "commit", "server_id", "store", "started_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    version: str
    commit: str
    server_id: str
    store: str
    started_at: int
    def __init__(self, version: _Optional[str] = ..., commit: _Optional[str] = ..., server_id: _Optional[str] = ..., store: _Optional[str] = ..., started_at: _Optional[int] = ...) -> None: ...

class GetRegistrationsRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id", "page_size", "page_token")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    page_size: int
    page_token: str
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetRegistrationsResponse(_message.Message):
    __slots__ = ("registrations", "revision", "next_page_token")
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registrations: _containers.RepeatedCompositeFieldContainer[FunctionRegistration]
    revision: int
    next_page_token: str
    def __init__(self, registrations: _Optional[_Iterable[_Union[FunctionRegistration, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FunctionRegistration(_message.Message):
    __slots__ = ("function_id", "game_id", "env", "agents", "function_descriptor")
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    game_id: str
    env: str
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    function_descriptor: _common_pb2.FunctionDescriptor
    def __init__(self, function_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., function_descriptor: _Optional[_Union[_common_pb2.FunctionDescriptor, _Mapping]] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "addr", "last_heartbeat", "labels", "node_state", "online", "version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    addr: str
    last_heartbeat: int
    labels: _containers.ScalarMap[str, str]
    node_state: _common_pb2.NodeState
    online: bool
    version: str
    def __init__(self, agent_id: _Optional[str] = ..., addr: _Optional[str] = ..., last_heartbeat: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., node_state: _Optional[_Union[_common_pb2.NodeState, str]] = ..., online: _Optional[bool] = ..., version: _Optional[str] = ...) -> None: ...

class WatchRegistrationsRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id", "start_revision")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    start_revision: int
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ..., start_revision: _Optional[int] = ...) -> None: ...

class RegistrationEvent(_message.Message):
    __slots__ = ("type", "registration", "revision", "agent_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    registration: FunctionRegistration
    revision: int
    agent_id: str
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., registration: _Optional[_Union[FunctionRegistration, _Mapping]] = ..., revision: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("game_id", "env", "page_size", "page_token")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    page_size: int
    page_token: str
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentDetail]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentDetail, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AgentDetail(_message.Message):
    __slots__ = ("agent_id", "game_id", "env", "version", "functions", "labels", "node_state", "online", "last_heartbeat", "owner", "status", "addr", "in_flight")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    game_id: str
    env: str
    version: str
    functions: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    node_state: _common_pb2.NodeStateRecord
    online: bool
    last_heartbeat: int
    owner: str
    status: _containers.ScalarMap[str, str]
    addr: str
    in_flight: int
    def __init__(self, agent_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., version: _Optional[str] = ..., functions: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., node_state: _Optional[_Union[_common_pb2.NodeStateRecord, _Mapping]] = ..., online: _Optional[bool] = ..., last_heartbeat: _Optional[int] = ..., owner: _Optional[str] = ..., status: _Optional[_Mapping[str, str]] = ..., addr: _Optional[str] = ..., in_flight: _Optional[int] = ...) -> None: ...
