from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "sampler", "num_images", "model", "job_id", "preview")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    sampler: str
    num_images: int
    model: str
    job_id: str
    preview: bool
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., sampler: _Optional[str] = ..., num_images: _Optional[int] = ..., model: _Optional[str] = ..., job_id: _Optional[str] = ..., preview: _Optional[bool] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("png", "seed", "width", "height", "parameters")
    PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    seed: int
    width: int
    height: int
    parameters: str
    def __init__(self, png: _Optional[bytes] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., parameters: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_seconds", "generate_seconds", "total_seconds", "batch_requests")
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    queued_seconds: float
    generate_seconds: float
    total_seconds: float
    batch_requests: int
    def __init__(self, queued_seconds: _Optional[float] = ..., generate_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., batch_requests: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "seeds", "timings", "job_id", "model")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    timings: Timings
    job_id: str
    model: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., seeds: _Optional[_Iterable[int]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., job_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("job_id", "position")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    position: int
    def __init__(self, job_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_id", "step", "total", "preview_png")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_PNG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    total: int
    preview_png: bytes
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., preview_png: _Optional[bytes] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("queued", "progress", "result")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    queued: Queued
    progress: Progress
    result: GenerateResponse
    def __init__(self, queued: _Optional[_Union[Queued, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("job_id", "previous_state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    previous_state: str
    def __init__(self, job_id: _Optional[str] = ..., previous_state: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "model", "device", "queue_depth", "jobs_in_flight", "uptime_seconds", "rss_bytes", "peak_rss_bytes", "model_loaded", "random_weights", "queue_capacity", "max_batch_size", "images_generated", "gpu_memory_used_bytes", "gpu_memory_total_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: str
    device: str
    queue_depth: int
    jobs_in_flight: int
    uptime_seconds: float
    rss_bytes: int
    peak_rss_bytes: int
    model_loaded: bool
    random_weights: bool
    queue_capacity: int
    max_batch_size: int
    images_generated: int
    gpu_memory_used_bytes: int
    gpu_memory_total_bytes: int
    def __init__(self, version: _Optional[str] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., queue_depth: _Optional[int] = ..., jobs_in_flight: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., model_loaded: _Optional[bool] = ..., random_weights: _Optional[bool] = ..., queue_capacity: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., images_generated: _Optional[int] = ..., gpu_memory_used_bytes: _Optional[int] = ..., gpu_memory_total_bytes: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "device", "is_default", "random_weights", "default_width", "default_height", "samplers", "default_guidance_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    is_default: bool
    random_weights: bool
    default_width: int
    default_height: int
    samplers: _containers.RepeatedScalarFieldContainer[str]
    default_guidance_scale: float
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., is_default: _Optional[bool] = ..., random_weights: _Optional[bool] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., samplers: _Optional[_Iterable[str]] = ..., default_guidance_scale: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class EmbeddingRequest(_message.Message):
    __slots__ = ("prompt", "model")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class EmbeddingResponse(_message.Message):
    __slots__ = ("shape", "values", "model")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    model: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ...) -> None: ...
