from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    REQUEST_HEADERS: _ClassVar[Phase]
    REQUEST_BODY: _ClassVar[Phase]
    RESPONSE_HEADERS: _ClassVar[Phase]
    RESPONSE_BODY: _ClassVar[Phase]
    GENERATE_RESPONSE: _ClassVar[Phase]
    REQUEST_BODY_CHUNK: _ClassVar[Phase]
    RESPONSE_BODY_CHUNK: _ClassVar[Phase]
    REQUEST_TRAILERS: _ClassVar[Phase]
    RESPONSE_TRAILERS: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
REQUEST_HEADERS: Phase
REQUEST_BODY: Phase
RESPONSE_HEADERS: Phase
RESPONSE_BODY: Phase
GENERATE_RESPONSE: Phase
REQUEST_BODY_CHUNK: Phase
RESPONSE_BODY_CHUNK: Phase
REQUEST_TRAILERS: Phase
RESPONSE_TRAILERS: Phase

class Header(_message.Message):
    __slots__ = ("name", "value", "raw_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RAW_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    raw_value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., raw_value: _Optional[bytes] = ...) -> None: ...

class Body(_message.Message):
    __slots__ = ("text", "data")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    text: str
    data: bytes
    def __init__(self, text: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class HttpRequest(_message.Message):
    __slots__ = ("method", "path", "scheme", "authority", "headers", "body", "trailers")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    scheme: str
    authority: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: Body
    trailers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., scheme: _Optional[str] = ..., authority: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class HttpResponse(_message.Message):
    __slots__ = ("status", "headers", "body", "trailers")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: Body
    trailers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class PluginInput(_message.Message):
    __slots__ = ("phase", "request", "response", "attributes", "metadata", "plugin_name", "state", "route", "end_of_stream", "chunk_index")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    request: HttpRequest
    response: HttpResponse
    attributes: _struct_pb2.Struct
    metadata: _struct_pb2.Struct
    plugin_name: str
    state: Body
    route: _struct_pb2.Struct
    end_of_stream: bool
    chunk_index: int
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., request: _Optional[_Union[HttpRequest, _Mapping]] = ..., response: _Optional[_Union[HttpResponse, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., plugin_name: _Optional[str] = ..., state: _Optional[_Union[Body, _Mapping]] = ..., route: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., end_of_stream: _Optional[bool] = ..., chunk_index: _Optional[int] = ...) -> None: ...

class HeaderMutation(_message.Message):
    __slots__ = ("set", "append", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Header]
    append: _containers.RepeatedCompositeFieldContainer[Header]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., append: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class ImmediateResponse(_message.Message):
    __slots__ = ("status", "headers", "body", "grpc_status", "details")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: Body
    grpc_status: int
    details: str
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., grpc_status: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class PluginOutput(_message.Message):
    __slots__ = ("headers", "body", "immediate_response", "dynamic_metadata", "state")
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    IMMEDIATE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_METADATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    headers: HeaderMutation
    body: Body
    immediate_response: ImmediateResponse
    dynamic_metadata: _struct_pb2.Struct
    state: Body
    def __init__(self, headers: _Optional[_Union[HeaderMutation, _Mapping]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., immediate_response: _Optional[_Union[ImmediateResponse, _Mapping]] = ..., dynamic_metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[Body, _Mapping]] = ...) -> None: ...

class PhaseDeclaration(_message.Message):
    __slots__ = ("phases",)
    PHASES_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, phases: _Optional[_Iterable[str]] = ...) -> None: ...
