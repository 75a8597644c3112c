from google.protobuf import struct_pb2 as _struct_pb2
from croupier.common.v1 import common_pb2 as _common_pb2
from croupier.function.v1 import function_pb2 as _function_pb2
from croupier.control.v1 import fleet_pb2 as _fleet_pb2
from croupier.control.v1 import assignment_pb2 as _assignment_pb2
from croupier.control.v1 import users_pb2 as _users_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent_id", "game_id", "env", "version", "functions", "labels", "descriptors", "session_id", "max_message_bytes", "inventory")
    class LabelsEntry(_message.Message):
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
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    game_id: str
    env: str
    version: str
    functions: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    descriptors: _containers.RepeatedCompositeFieldContainer[_common_pb2.FunctionDescriptor]
    session_id: str
    max_message_bytes: int
    inventory: _fleet_pb2.NodeInventory
    def __init__(self, agent_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., version: _Optional[str] = ..., functions: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., descriptors: _Optional[_Iterable[_Union[_common_pb2.FunctionDescriptor, _Mapping]]] = ..., session_id: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., inventory: _Optional[_Union[_fleet_pb2.NodeInventory, _Mapping]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("success", "agent_id", "heartbeat_interval", "session_id", "resumed", "node_state")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    agent_id: str
    heartbeat_interval: int
    session_id: str
    resumed: bool
    node_state: _common_pb2.NodeState
    def __init__(self, success: _Optional[bool] = ..., agent_id: _Optional[str] = ..., heartbeat_interval: _Optional[int] = ..., session_id: _Optional[str] = ..., resumed: _Optional[bool] = ..., node_state: _Optional[_Union[_common_pb2.NodeState, str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "timestamp", "status", "session_id")
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    timestamp: int
    status: _containers.ScalarMap[str, str]
    session_id: str
    def __init__(self, agent_id: _Optional[str] = ..., timestamp: _Optional[int] = ..., status: _Optional[_Mapping[str, str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("success", "node_state")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    node_state: _common_pb2.NodeState
    def __init__(self, success: _Optional[bool] = ..., node_state: _Optional[_Union[_common_pb2.NodeState, str]] = ...) -> None: ...

class GetAssignmentsRequest(_message.Message):
    __slots__ = ("agent_id", "game_id", "env")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    game_id: str
    env: str
    def __init__(self, agent_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ...) -> None: ...

class GetAssignmentsResponse(_message.Message):
    __slots__ = ("assignments", "version")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[FunctionAssignment]
    version: int
    def __init__(self, assignments: _Optional[_Iterable[_Union[FunctionAssignment, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class FunctionAssignment(_message.Message):
    __slots__ = ("function_id", "enabled", "config", "assignment_ids")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    function_id: str
    enabled: bool
    config: _containers.ScalarMap[str, str]
    assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, function_id: _Optional[str] = ..., enabled: _Optional[bool] = ..., config: _Optional[_Mapping[str, str]] = ..., assignment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetNodeStateRequest(_message.Message):
    __slots__ = ("agent_id", "state", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    state: _common_pb2.NodeState
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.NodeState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetNodeStateResponse(_message.Message):
    __slots__ = ("success", "record", "delivery")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    success: bool
    record: _common_pb2.NodeStateRecord
    delivery: str
    def __init__(self, success: _Optional[bool] = ..., record: _Optional[_Union[_common_pb2.NodeStateRecord, _Mapping]] = ..., delivery: _Optional[str] = ...) -> None: ...

class AgentFrame(_message.Message):
    __slots__ = ("hello", "result", "job_event", "jobs_report", "goodbye", "heartbeat", "node_event", "inventory", "metrics", "state_applied")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    JOB_EVENT_FIELD_NUMBER: _ClassVar[int]
    JOBS_REPORT_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NODE_EVENT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATE_APPLIED_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    result: InvokeResult
    job_event: AgentJobEvent
    jobs_report: JobsReport
    goodbye: Goodbye
    heartbeat: HeartbeatRequest
    node_event: _fleet_pb2.NodeEvent
    inventory: _fleet_pb2.NodeInventory
    metrics: _fleet_pb2.MetricsReport
    state_applied: StateApplied
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., result: _Optional[_Union[InvokeResult, _Mapping]] = ..., job_event: _Optional[_Union[AgentJobEvent, _Mapping]] = ..., jobs_report: _Optional[_Union[JobsReport, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., heartbeat: _Optional[_Union[HeartbeatRequest, _Mapping]] = ..., node_event: _Optional[_Union[_fleet_pb2.NodeEvent, _Mapping]] = ..., inventory: _Optional[_Union[_fleet_pb2.NodeInventory, _Mapping]] = ..., metrics: _Optional[_Union[_fleet_pb2.MetricsReport, _Mapping]] = ..., state_applied: _Optional[_Union[StateApplied, _Mapping]] = ...) -> None: ...

class StateApplied(_message.Message):
    __slots__ = ("changed_at", "state")
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    changed_at: int
    state: _common_pb2.NodeState
    def __init__(self, changed_at: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.NodeState, str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "session_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session_id: str
    def __init__(self, agent_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class InvokeResult(_message.Message):
    __slots__ = ("request_id", "success", "result", "error", "error_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    success: bool
    result: _struct_pb2.Struct
    error: str
    error_code: str
    def __init__(self, request_id: _Optional[str] = ..., success: _Optional[bool] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class AgentJobEvent(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _function_pb2.JobEvent
    def __init__(self, event: _Optional[_Union[_function_pb2.JobEvent, _Mapping]] = ...) -> None: ...

class JobsReport(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ...) -> None: ...

class RunningJob(_message.Message):
    __slots__ = ("job_id", "function_id", "last_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    function_id: str
    last_seq: int
    def __init__(self, job_id: _Optional[str] = ..., function_id: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("invoke", "cancel", "state_change", "ack", "goaway", "welcome", "assignments_changed")
    INVOKE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    GOAWAY_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    invoke: Invoke
    cancel: Cancel
    state_change: StateChange
    ack: Ack
    goaway: Goaway
    welcome: Welcome
    assignments_changed: _assignment_pb2.AssignmentsChanged
    def __init__(self, invoke: _Optional[_Union[Invoke, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., state_change: _Optional[_Union[StateChange, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., goaway: _Optional[_Union[Goaway, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignments_changed: _Optional[_Union[_assignment_pb2.AssignmentsChanged, _Mapping]] = ...) -> None: ...

class Invoke(_message.Message):
    __slots__ = ("request_id", "function_id", "payload", "timeout_ms", "game_id", "env", "caller", "idempotency_key", "job_id", "traceparent", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    function_id: str
    payload: _struct_pb2.Struct
    timeout_ms: int
    game_id: str
    env: str
    caller: str
    idempotency_key: str
    job_id: str
    traceparent: str
    config: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., function_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., caller: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., job_id: _Optional[str] = ..., traceparent: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: _common_pb2.NodeStateRecord
    def __init__(self, record: _Optional[_Union[_common_pb2.NodeStateRecord, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("job_id", "seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Goaway(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "node_state", "max_message_bytes", "tunnel_heartbeats")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_state: _common_pb2.NodeState
    max_message_bytes: int
    tunnel_heartbeats: bool
    def __init__(self, session_id: _Optional[str] = ..., node_state: _Optional[_Union[_common_pb2.NodeState, str]] = ..., max_message_bytes: _Optional[int] = ..., tunnel_heartbeats: _Optional[bool] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy_json", "stored", "revision")
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policy_json: str
    stored: bool
    revision: int
    def __init__(self, policy_json: _Optional[str] = ..., stored: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class PutPolicyRequest(_message.Message):
    __slots__ = ("policy_json", "expect_revision")
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECT_REVISION_FIELD_NUMBER: _ClassVar[int]
    policy_json: str
    expect_revision: int
    def __init__(self, policy_json: _Optional[str] = ..., expect_revision: _Optional[int] = ...) -> None: ...

class PutPolicyResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class TestPolicyRequest(_message.Message):
    __slots__ = ("identity", "action", "function_id", "game_id", "env", "policy_json")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    action: str
    function_id: str
    game_id: str
    env: str
    policy_json: str
    def __init__(self, identity: _Optional[str] = ..., action: _Optional[str] = ..., function_id: _Optional[str] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ..., policy_json: _Optional[str] = ...) -> None: ...

class TestPolicyResponse(_message.Message):
    __slots__ = ("allowed", "rule", "explanation", "approvers", "approval_count", "roles")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    rule: str
    explanation: str
    approvers: str
    approval_count: int
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed: _Optional[bool] = ..., rule: _Optional[str] = ..., explanation: _Optional[str] = ..., approvers: _Optional[str] = ..., approval_count: _Optional[int] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("who", "target", "action", "since", "outcome", "limit")
    WHO_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    who: str
    target: str
    action: str
    since: int
    outcome: str
    limit: int
    def __init__(self, who: _Optional[str] = ..., target: _Optional[str] = ..., action: _Optional[str] = ..., since: _Optional[int] = ..., outcome: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records", "server_id", "truncated", "checkpoint_seq", "checkpoint_hash")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HASH_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[str]
    server_id: str
    truncated: bool
    checkpoint_seq: int
    checkpoint_hash: str
    def __init__(self, records: _Optional[_Iterable[str]] = ..., server_id: _Optional[str] = ..., truncated: _Optional[bool] = ..., checkpoint_seq: _Optional[int] = ..., checkpoint_hash: _Optional[str] = ...) -> None: ...
