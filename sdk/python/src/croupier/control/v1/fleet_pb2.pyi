from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInventory(_message.Message):
    __slots__ = ("node_type", "cpu", "memory", "gpus", "disks", "nics", "os", "kernel", "runtimes", "hostname", "collected_at")
    NODE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    node_type: str
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    disks: _containers.RepeatedCompositeFieldContainer[DiskInfo]
    nics: _containers.RepeatedCompositeFieldContainer[NicInfo]
    os: OsInfo
    kernel: KernelInfo
    runtimes: RuntimeInfo
    hostname: str
    collected_at: int
    def __init__(self, node_type: _Optional[str] = ..., cpu: _Optional[_Union[CpuInfo, _Mapping]] = ..., memory: _Optional[_Union[MemoryInfo, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., disks: _Optional[_Iterable[_Union[DiskInfo, _Mapping]]] = ..., nics: _Optional[_Iterable[_Union[NicInfo, _Mapping]]] = ..., os: _Optional[_Union[OsInfo, _Mapping]] = ..., kernel: _Optional[_Union[KernelInfo, _Mapping]] = ..., runtimes: _Optional[_Union[RuntimeInfo, _Mapping]] = ..., hostname: _Optional[str] = ..., collected_at: _Optional[int] = ...) -> None: ...

class CpuInfo(_message.Message):
    __slots__ = ("model", "vendor", "cores", "threads", "frequency_mhz", "cache_bytes", "arch")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    model: str
    vendor: str
    cores: int
    threads: int
    frequency_mhz: int
    cache_bytes: int
    arch: str
    def __init__(self, model: _Optional[str] = ..., vendor: _Optional[str] = ..., cores: _Optional[int] = ..., threads: _Optional[int] = ..., frequency_mhz: _Optional[int] = ..., cache_bytes: _Optional[int] = ..., arch: _Optional[str] = ...) -> None: ...

class MemoryInfo(_message.Message):
    __slots__ = ("total_bytes", "swap_total_bytes", "memory_type", "frequency_mhz")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TYPE_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    swap_total_bytes: int
    memory_type: str
    frequency_mhz: int
    def __init__(self, total_bytes: _Optional[int] = ..., swap_total_bytes: _Optional[int] = ..., memory_type: _Optional[str] = ..., frequency_mhz: _Optional[int] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("model", "memory_bytes", "driver_version", "compute_capability", "cuda_version", "power_limit_watts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    memory_bytes: int
    driver_version: str
    compute_capability: str
    cuda_version: str
    power_limit_watts: float
    def __init__(self, model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., driver_version: _Optional[str] = ..., compute_capability: _Optional[str] = ..., cuda_version: _Optional[str] = ..., power_limit_watts: _Optional[float] = ...) -> None: ...

class DiskInfo(_message.Message):
    __slots__ = ("name", "model", "total_bytes", "kind", "mount_point", "file_system")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MOUNT_POINT_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    total_bytes: int
    kind: str
    mount_point: str
    file_system: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., total_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., mount_point: _Optional[str] = ..., file_system: _Optional[str] = ...) -> None: ...

class NicInfo(_message.Message):
    __slots__ = ("name", "mac", "addresses", "speed_mbps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SPEED_MBPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mac: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    speed_mbps: int
    def __init__(self, name: _Optional[str] = ..., mac: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., speed_mbps: _Optional[int] = ...) -> None: ...

class OsInfo(_message.Message):
    __slots__ = ("distribution", "version", "arch")
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    distribution: str
    version: str
    arch: str
    def __init__(self, distribution: _Optional[str] = ..., version: _Optional[str] = ..., arch: _Optional[str] = ...) -> None: ...

class KernelInfo(_message.Message):
    __slots__ = ("major", "minor", "patch", "release")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    patch: int
    release: str
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ..., patch: _Optional[int] = ..., release: _Optional[str] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("docker", "containerd", "runc")
    DOCKER_FIELD_NUMBER: _ClassVar[int]
    CONTAINERD_FIELD_NUMBER: _ClassVar[int]
    RUNC_FIELD_NUMBER: _ClassVar[int]
    docker: str
    containerd: str
    runc: str
    def __init__(self, docker: _Optional[str] = ..., containerd: _Optional[str] = ..., runc: _Optional[str] = ...) -> None: ...

class InventoryVersion(_message.Message):
    __slots__ = ("version", "recorded_at", "inventory")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    version: int
    recorded_at: int
    inventory: NodeInventory
    def __init__(self, version: _Optional[int] = ..., recorded_at: _Optional[int] = ..., inventory: _Optional[_Union[NodeInventory, _Mapping]] = ...) -> None: ...

class GetNodeResourcesRequest(_message.Message):
    __slots__ = ("agent_id", "history", "diff_from", "diff_to")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    DIFF_FROM_FIELD_NUMBER: _ClassVar[int]
    DIFF_TO_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    history: bool
    diff_from: int
    diff_to: int
    def __init__(self, agent_id: _Optional[str] = ..., history: _Optional[bool] = ..., diff_from: _Optional[int] = ..., diff_to: _Optional[int] = ...) -> None: ...

class GetNodeResourcesResponse(_message.Message):
    __slots__ = ("versions", "changes")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[InventoryVersion]
    changes: _containers.RepeatedCompositeFieldContainer[InventoryChange]
    def __init__(self, versions: _Optional[_Iterable[_Union[InventoryVersion, _Mapping]]] = ..., changes: _Optional[_Iterable[_Union[InventoryChange, _Mapping]]] = ...) -> None: ...

class InventoryChange(_message.Message):
    __slots__ = ("path", "before", "after")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    path: str
    before: str
    after: str
    def __init__(self, path: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("type", "node_id", "entity_id", "status", "message", "timestamp", "data", "seq", "received_at", "game_id", "env")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    GAME_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    type: str
    node_id: str
    entity_id: str
    status: str
    message: str
    timestamp: int
    data: _containers.ScalarMap[str, str]
    seq: int
    received_at: int
    game_id: str
    env: str
    def __init__(self, type: _Optional[str] = ..., node_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., timestamp: _Optional[int] = ..., data: _Optional[_Mapping[str, str]] = ..., seq: _Optional[int] = ..., received_at: _Optional[int] = ..., game_id: _Optional[str] = ..., env: _Optional[str] = ...) -> None: ...

class StreamNodeEventsRequest(_message.Message):
    __slots__ = ("node_id", "type", "since", "from_seq", "follow")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    type: str
    since: int
    from_seq: int
    follow: bool
    def __init__(self, node_id: _Optional[str] = ..., type: _Optional[str] = ..., since: _Optional[int] = ..., from_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class StreamNodeEventsResponse(_message.Message):
    __slots__ = ("event", "gap_from", "gap_next")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    GAP_FROM_FIELD_NUMBER: _ClassVar[int]
    GAP_NEXT_FIELD_NUMBER: _ClassVar[int]
    event: NodeEvent
    gap_from: int
    gap_next: int
    def __init__(self, event: _Optional[_Union[NodeEvent, _Mapping]] = ..., gap_from: _Optional[int] = ..., gap_next: _Optional[int] = ...) -> None: ...

class MetricSample(_message.Message):
    __slots__ = ("timestamp", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    values: _containers.ScalarMap[str, float]
    def __init__(self, timestamp: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[MetricSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[MetricSample, _Mapping]]] = ...) -> None: ...

class QueryNodeMetricsRequest(_message.Message):
    __slots__ = ("agent_id", "since", "metrics")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    since: int
    metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., since: _Optional[int] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryNodeMetricsResponse(_message.Message):
    __slots__ = ("series", "raw_since", "step_ms")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    RAW_SINCE_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[MetricSeries]
    raw_since: int
    step_ms: int
    def __init__(self, series: _Optional[_Iterable[_Union[MetricSeries, _Mapping]]] = ..., raw_since: _Optional[int] = ..., step_ms: _Optional[int] = ...) -> None: ...

class MetricSeries(_message.Message):
    __slots__ = ("name", "points")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, name: _Optional[str] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("timestamp", "value", "min", "max")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    value: float
    min: float
    max: float
    def __init__(self, timestamp: _Optional[int] = ..., value: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...
