from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateImageRequest(_message.Message):
    __slots__ = ("prompt", "height", "width", "guidance_scale", "num_inference_steps", "negative_prompt", "seed")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    height: int
    width: int
    guidance_scale: float
    num_inference_steps: int
    negative_prompt: str
    seed: int
    def __init__(self, prompt: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., num_inference_steps: _Optional[int] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateImageResponse(_message.Message):
    __slots__ = ("image", "prompt", "height", "width", "guidance_scale", "num_inference_steps", "negative_prompt", "seed", "mime_type", "generation_time_seconds")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    prompt: str
    height: int
    width: int
    guidance_scale: float
    num_inference_steps: int
    negative_prompt: str
    seed: int
    mime_type: str
    generation_time_seconds: float
    def __init__(self, image: _Optional[bytes] = ..., prompt: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., num_inference_steps: _Optional[int] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ..., mime_type: _Optional[str] = ..., generation_time_seconds: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("status", "model_version", "device", "memory_rss_bytes", "queue_depth", "jobs_in_flight", "uptime_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    model_version: str
    device: str
    memory_rss_bytes: int
    queue_depth: int
    jobs_in_flight: int
    uptime_seconds: float
    def __init__(self, status: _Optional[str] = ..., model_version: _Optional[str] = ..., device: _Optional[str] = ..., memory_rss_bytes: _Optional[int] = ..., queue_depth: _Optional[int] = ..., jobs_in_flight: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...
