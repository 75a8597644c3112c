from google.protobuf import struct_pb2 as _struct_pb2
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
    START: _ClassVar[EventType]
    PROGRESS: _ClassVar[EventType]
    LOG: _ClassVar[EventType]
    DONE: _ClassVar[EventType]
    ERROR: _ClassVar[EventType]
    CANCELLED: _ClassVar[EventType]
    GAP: _ClassVar[EventType]
START: EventType
PROGRESS: EventType
LOG: EventType
DONE: EventType
ERROR: EventType
CANCELLED: EventType
GAP: EventType

class GetFunctionStatsRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ...) -> None: ...

class GetFunctionStatsResponse(_message.Message):
    __slots__ = ("server_id", "stats")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    stats: _containers.RepeatedCompositeFieldContainer[FunctionStats]
    def __init__(self, server_id: _Optional[str] = ..., stats: _Optional[_Iterable[_Union[FunctionStats, _Mapping]]] = ...) -> None: ...

class FunctionStats(_message.Message):
    __slots__ = ("game_id", "env", "function_id", "total", "last_minute", "last_error", "last_error_at", "agents")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    total: StatsWindow
    last_minute: StatsWindow
    last_error: str
    last_error_at: int
    agents: _containers.RepeatedCompositeFieldContainer[AgentStats]
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ..., total: _Optional[_Union[StatsWindow, _Mapping]] = ..., last_minute: _Optional[_Union[StatsWindow, _Mapping]] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[int] = ..., agents: _Optional[_Iterable[_Union[AgentStats, _Mapping]]] = ...) -> None: ...

class StatsWindow(_message.Message):
    __slots__ = ("calls", "errors", "success_rate", "p50_ms", "p99_ms", "rate_per_sec")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    calls: int
    errors: int
    success_rate: float
    p50_ms: float
    p99_ms: float
    rate_per_sec: float
    def __init__(self, calls: _Optional[int] = ..., errors: _Optional[int] = ..., success_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., rate_per_sec: _Optional[float] = ...) -> None: ...

class AgentStats(_message.Message):
    __slots__ = ("agent_id", "calls", "errors", "last_error")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    calls: int
    errors: int
    last_error: str
    def __init__(self, agent_id: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class InvokeFunctionRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id", "payload", "options")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    payload: _struct_pb2.Struct
    options: InvokeOptions
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., options: _Optional[_Union[InvokeOptions, _Mapping]] = ...) -> None: ...

class InvokeOptions(_message.Message):
    __slots__ = ("idempotency_key", "timeout", "routing_mode", "target_agent", "hash_key", "selector", "version")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ROUTING_MODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_FIELD_NUMBER: _ClassVar[int]
    HASH_KEY_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    timeout: int
    routing_mode: str
    target_agent: str
    hash_key: str
    selector: _containers.ScalarMap[str, str]
    version: str
    def __init__(self, idempotency_key: _Optional[str] = ..., timeout: _Optional[int] = ..., routing_mode: _Optional[str] = ..., target_agent: _Optional[str] = ..., hash_key: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ...) -> None: ...

class InvokeFunctionResponse(_message.Message):
    __slots__ = ("success", "result", "error", "error_code", "agent_id", "results", "request_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    result: _struct_pb2.Struct
    error: str
    error_code: str
    agent_id: str
    results: _containers.RepeatedCompositeFieldContainer[AgentResult]
    request_id: str
    def __init__(self, success: _Optional[bool] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ..., agent_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[AgentResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AgentResult(_message.Message):
    __slots__ = ("agent_id", "success", "result", "error", "error_code")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    success: bool
    result: _struct_pb2.Struct
    error: str
    error_code: str
    def __init__(self, agent_id: _Optional[str] = ..., success: _Optional[bool] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class InvokeJobRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id", "payload", "options")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    payload: _struct_pb2.Struct
    options: InvokeOptions
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., options: _Optional[_Union[InvokeOptions, _Mapping]] = ...) -> None: ...

class InvokeJobResponse(_message.Message):
    __slots__ = ("success", "job_id", "status")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    job_id: str
    status: str
    def __init__(self, success: _Optional[bool] = ..., job_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class StreamJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "from_seq", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_seq: int
    step: str
    def __init__(self, job_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., step: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "type", "message", "progress", "timestamp", "data", "seq", "received_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    type: EventType
    message: str
    progress: float
    timestamp: int
    data: _struct_pb2.Struct
    seq: int
    received_at: int
    def __init__(self, job_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., message: _Optional[str] = ..., progress: _Optional[float] = ..., timestamp: _Optional[int] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., seq: _Optional[int] = ..., received_at: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("success", "status", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    status: str
    message: str
    def __init__(self, success: _Optional[bool] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RegisterFunctionRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_descriptor")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_descriptor: _common_pb2.FunctionDescriptor
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_descriptor: _Optional[_Union[_common_pb2.FunctionDescriptor, _Mapping]] = ...) -> None: ...

class RegisterFunctionResponse(_message.Message):
    __slots__ = ("success", "function_id", "revision")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    function_id: str
    revision: int
    def __init__(self, success: _Optional[bool] = ..., function_id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteFunctionRequest(_message.Message):
    __slots__ = ("game_id", "env", "function_id")
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    game_id: str
    env: str
    function_id: str
    def __init__(self, game_id: _Optional[str] = ..., env: _Optional[str] = ..., function_id: _Optional[str] = ...) -> None: ...

class DeleteFunctionResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class GetStepLogRequest(_message.Message):
    __slots__ = ("job_id", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: str
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class GetStepLogResponse(_message.Message):
    __slots__ = ("step", "index", "status", "lines", "dropped_lines", "ended_at")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_LINES_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    step: str
    index: int
    status: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    dropped_lines: int
    ended_at: int
    def __init__(self, step: _Optional[str] = ..., index: _Optional[int] = ..., status: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ..., dropped_lines: _Optional[int] = ..., ended_at: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobRecord
    def __init__(self, job: _Optional[_Union[JobRecord, _Mapping]] = ...) -> None: ...

class JobRecord(_message.Message):
    __slots__ = ("job_id", "function_id", "game_id", "env", "agent_id", "caller", "status", "created_at", "started_at", "ended_at", "result", "error", "error_code", "last_seq", "first_seq", "cancel_reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    function_id: str
    game_id: str
    env: str
    agent_id: str
    caller: str
    status: str
    created_at: int
    started_at: int
    ended_at: int
    result: _struct_pb2.Struct
    error: str
    error_code: str
    last_seq: int
    first_seq: int
    cancel_reason: str
    def __init__(self, job_id: _Optional[str] = ..., function_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., agent_id: _Optional[str] = ..., caller: _Optional[str] = ..., status: _Optional[str] = ..., created_at: _Optional[int] = ..., started_at: _Optional[int] = ..., ended_at: _Optional[int] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ..., last_seq: _Optional[int] = ..., first_seq: _Optional[int] = ..., cancel_reason: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("function_id", "agent_id", "status", "page_size", "page_token", "game_id", "env")
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    agent_id: str
    status: str
    page_size: int
    page_token: str
    game_id: str
    env: str
    def __init__(self, function_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., status: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobRecord]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PipelineTemplate(_message.Message):
    __slots__ = ("id", "description", "args", "envs", "steps")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    args: _containers.RepeatedCompositeFieldContainer[PipelineArg]
    envs: _containers.RepeatedScalarFieldContainer[str]
    steps: _containers.RepeatedCompositeFieldContainer[PipelineStep]
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., args: _Optional[_Iterable[_Union[PipelineArg, _Mapping]]] = ..., envs: _Optional[_Iterable[str]] = ..., steps: _Optional[_Iterable[_Union[PipelineStep, _Mapping]]] = ...) -> None: ...

class PipelineArg(_message.Message):
    __slots__ = ("name", "required", "default_value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    required: bool
    default_value: str
    description: str
    def __init__(self, name: _Optional[str] = ..., required: _Optional[bool] = ..., default_value: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class PipelineStep(_message.Message):
    __slots__ = ("name", "function_id", "args", "timeout", "continue_on_failure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    function_id: str
    args: _struct_pb2.Struct
    timeout: int
    continue_on_failure: bool
    def __init__(self, name: _Optional[str] = ..., function_id: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., timeout: _Optional[int] = ..., continue_on_failure: _Optional[bool] = ...) -> None: ...

class PutPipelineRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: PipelineTemplate
    def __init__(self, template: _Optional[_Union[PipelineTemplate, _Mapping]] = ...) -> None: ...

class PutPipelineResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class GetPipelineRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPipelineResponse(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: PipelineTemplate
    def __init__(self, template: _Optional[_Union[PipelineTemplate, _Mapping]] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[PipelineTemplate]
    def __init__(self, templates: _Optional[_Iterable[_Union[PipelineTemplate, _Mapping]]] = ...) -> None: ...

class DeletePipelineRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeletePipelineResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "state", "kind", "requester", "function_id", "game_id", "env", "payload", "approvers", "count", "decisions", "created_at", "expires_at", "job_id", "result", "error_code", "error", "rule")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    kind: str
    requester: str
    function_id: str
    game_id: str
    env: str
    payload: _struct_pb2.Struct
    approvers: str
    count: int
    decisions: _containers.RepeatedCompositeFieldContainer[ApprovalDecision]
    created_at: int
    expires_at: int
    job_id: str
    result: _struct_pb2.Struct
    error_code: str
    error: str
    rule: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., kind: _Optional[str] = ..., requester: _Optional[str] = ..., function_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., approvers: _Optional[str] = ..., count: _Optional[int] = ..., decisions: _Optional[_Iterable[_Union[ApprovalDecision, _Mapping]]] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., job_id: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class ApprovalDecision(_message.Message):
    __slots__ = ("who", "approve", "reason", "at")
    WHO_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    who: str
    approve: bool
    reason: str
    at: int
    def __init__(self, who: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., at: _Optional[int] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("state", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: str
    limit: int
    def __init__(self, state: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("id", "approve", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    approve: bool
    reason: str
    def __init__(self, id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...
