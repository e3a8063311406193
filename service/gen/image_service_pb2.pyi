from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ImageRequest(_message.Message):
    __slots__ = ("positive_prompt", "negative_prompt")
    POSITIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    positive_prompt: str
    negative_prompt: str
    def __init__(self, positive_prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ...) -> None: ...

class ImageResponse(_message.Message):
    __slots__ = ("image", "mime_type", "filename_hint")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_HINT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    mime_type: str
    filename_hint: str
    def __init__(self, image: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., filename_hint: _Optional[str] = ...) -> None: ...
