"""The OpenAI-compatible transcription wire module, without sockets: shapes and round trips."""

# ruff: noqa: E501  (recorded payloads are kept on one line each)

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttrouter.wire import openai as wire

# Shapes as documented in reference/server-protocols.md (vLLM, SGLang, Z.AI).
VLLM_STREAM = (
    b'data: {"id":"trsc-1","object":"transcription.chunk","created":1,"model":"glm",'
    b'"choices":[{"delta":{"content":"hello"}}]}\n\n'
    b'data: {"id":"trsc-1","object":"transcription.chunk","created":1,"model":"glm",'
    b'"choices":[{"delta":{"content":" world"},"finish_reason":"stop","stop_reason":null}]}\n\n'
    b'data: {"id":"trsc-1","object":"transcription.chunk","created":1,"model":"glm",'
    b'"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}\n\n'
    b"data: [DONE]\n\n"
)
SGLANG_STREAM = (
    b'data: {"id":"1","object":"transcription.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\r\n\r\n'
    b'data: {"id":"1","object":"transcription.chunk","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
)
ZAI_STREAM = (
    b'data: {"id":"z","created":1,"model":"glm-asr-2512","type":"transcript.text.delta","delta":"ni"}\n\n'
    b'data: {"id":"z","created":1,"model":"glm-asr-2512","type":"transcript.text.delta","delta":"hao"}\n\n'
    b'data: {"id":"z","created":1,"model":"glm-asr-2512","type":"transcript.text.done","text":"nihao"}\n\n'
    b"data: [DONE]\n\n"
)


def decode_all(stream: bytes, step: int) -> list[wire.StreamEvent]:
    decoder = wire.SSEDecoder()
    datas: list[str] = []
    for i in range(0, len(stream), step):
        datas += decoder.feed(stream[i : i + step])
    datas += decoder.close()
    return [ev for d in datas for ev in wire.parse_stream_event(d)]


@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_vllm_stream_with_usage(step: int) -> None:
    events = decode_all(VLLM_STREAM, step)
    assert [e.kind for e in events] == ["delta", "delta", "done", "usage", "end"]
    assert wire.iter_text(iter(events)) == "hello world"
    assert events[2].finish_reason == "stop"


@pytest.mark.parametrize("step", [1, 2, 10_000])
def test_sglang_stream_with_crlf_and_empty_final_delta(step: int) -> None:
    events = decode_all(SGLANG_STREAM, step)
    assert [e.kind for e in events] == ["delta", "done", "end"]
    assert events[1].finish_reason == "length"


def test_zai_stream_done_carries_the_whole_text() -> None:
    events = decode_all(ZAI_STREAM, 5)
    assert [e.kind for e in events] == ["delta", "delta", "done", "end"]
    assert wire.iter_text(iter(events)) == "nihao"


@pytest.mark.parametrize(
    ("payload", "message", "code"),
    [
        ('{"error":{"message":"bad audio","type":"BadRequestError","param":null,"code":400}}',
         "bad audio", "400"),
        ('{"object":"error","message":"too long","type":"BadRequestError","code":400}',
         "too long", "400"),
        ('{"error":"boom","code":"processing_error"}', "boom", "processing_error"),
    ],
)  # fmt: skip
def test_mid_stream_errors_in_every_shape(payload: str, message: str, code: str) -> None:
    (event,) = wire.parse_stream_event(payload)
    assert event.kind == "error"
    assert event.error is not None
    assert event.error.message == message
    assert event.error.code == code


@pytest.mark.parametrize("payload", ["not json", "[1,2]", '{"foo": 1}', '{"choices": [3]}'])
def test_unknown_stream_payloads_are_rejected(payload: str) -> None:
    with pytest.raises(ValueError, match="stream"):
        wire.parse_stream_event(payload)


def test_sse_comments_multiline_data_and_unterminated_tail() -> None:
    decoder = wire.SSEDecoder()
    assert decoder.feed(b": keep-alive\n\nevent: x\ndata: a\ndata:b\n\n") == ["a\nb"]
    assert decoder.feed(b"data: tail\r") == []
    assert decoder.close() == ["tail"]
    assert decoder.close() == []


@pytest.mark.parametrize(
    ("status", "body", "message", "code"),
    [
        (400, b'{"error":{"message":"m","type":"t","param":null,"code":"c"}}', "m", "c"),
        (400, b'{"object":"error","message":"old","type":"t","code":400}', "old", "400"),
        (400, b'{"code":"1214","message":"format not supported"}', "format not supported", "1214"),
        (400, b'{"error":{"code":"1214","message":"zai nested"}}', "zai nested", "1214"),
        (502, b"<html>bad gateway</html>", "<html>bad gateway</html>", None),
        (503, b"", "HTTP 503", None),
    ],
)
def test_error_bodies(status: int, body: bytes, message: str, code: str | None) -> None:
    err = wire.parse_error(status, body)
    assert (err.message, err.code, err.status) == (message, code, status)


def test_error_body_round_trips_through_parse_error() -> None:
    for shape in ("openai", "object", "zai"):
        body = json.dumps(wire.error_body("nope", code=429, shape=shape)).encode()  # type: ignore[arg-type]
        assert wire.parse_error(429, body).message == "nope"
    assert wire.error_from_json({"text": "hi"}) is None
    assert wire.error_from_json([1]) is None


def test_transcription_responses() -> None:
    r = wire.parse_transcription(
        "application/json", b'{"text":"hi","usage":{"type":"duration","seconds":3}}'
    )
    assert (r.text, r.usage_seconds, r.language) == ("hi", 3.0, None)
    zai = wire.parse_transcription(
        "application/json; charset=utf-8",
        json.dumps(wire.transcription_body("x", None, "zai")).encode(),
    )
    assert zai.text == "x"
    assert (
        wire.parse_transcription("application/json", b'{"text":"a","language":"en"}').language
        == "en"
    )
    assert wire.parse_transcription("text/plain", b" plain \n").text == "plain"
    with pytest.raises(ValueError, match="text"):
        wire.parse_transcription("application/json", b'{"foo":1}')
    assert wire.transcription_body("t", 1.2) == {
        "text": "t",
        "usage": {"type": "duration", "seconds": 2},
    }


def test_stream_chunks_parse_back() -> None:
    for flavor in ("vllm", "sglang", "zai"):
        delta = wire.stream_chunk(flavor, "abc")  # type: ignore[arg-type]
        done = wire.stream_chunk(flavor, "abc" if flavor == "zai" else "", finish_reason="stop")  # type: ignore[arg-type]
        events = [
            *wire.parse_stream_event(json.dumps(delta)),
            *wire.parse_stream_event(json.dumps(done)),
        ]
        assert wire.iter_text(iter(events)) == "abc"
        assert events[-1].kind == "done"
    assert wire.sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert wire.sse_done() == b"data: [DONE]\n\n"


# -- multipart and requests ------------------------------------------------------------------
def test_request_fields_round_trip() -> None:
    req = wire.TranscriptionRequest(
        model="glm",
        language="en",
        response_format="text",
        stream=True,
        temperature=0.0,
        max_completion_tokens=120,
        repetition_penalty=1.15,
        prompt="context",
        extra={"stream_include_usage": "true"},
    )
    assert wire.TranscriptionRequest.from_fields(req.to_fields()) == req
    assert wire.TranscriptionRequest.from_fields({}) == wire.TranscriptionRequest()
    with pytest.raises(ValueError, match="temperature"):
        wire.TranscriptionRequest.from_fields({"temperature": "hot"})
    with pytest.raises(ValueError, match="temperature"):
        wire.TranscriptionRequest.from_fields({"temperature": "nan"})


@settings(max_examples=60, deadline=None)
@given(
    fields=st.dictionaries(
        st.text(
            st.characters(codec="utf-8", exclude_characters='\r\n"\\'), min_size=1, max_size=10
        ),
        st.text(max_size=30),
        max_size=4,
    ),
    data=st.binary(max_size=300),
    filename=st.text(st.characters(codec="ascii", exclude_characters='\r\n"\\'), max_size=12),
)
def test_multipart_round_trip(fields: dict[str, str], data: bytes, filename: str) -> None:
    fields.pop("file", None)
    ctype, body = wire.encode_multipart(
        fields, {"file": wire.FormFile(filename, "audio/wav", data)}
    )
    got_fields, files = wire.parse_multipart(ctype, body)
    assert got_fields == fields
    assert files["file"] == wire.FormFile(filename, "audio/wav", data)


@pytest.mark.parametrize(
    ("ctype", "body", "match"),
    [
        ("application/json", b"{}", "expected multipart"),
        ("multipart/form-data", b"", "boundary"),
        ("multipart/form-data; boundary=b", b"junk--b\r\n", "does not start"),
        ("multipart/form-data; boundary=b", b"--b\r\nno separator--b--", "separator"),
        ("multipart/form-data; boundary=b", b"--bXX\r\n", "malformed"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "no name"),
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\r\n--b--', "UTF-8"),
        ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx', "truncated"),
    ],
)  # fmt: skip
def test_bad_multipart(ctype: str, body: bytes, match: str) -> None:
    with pytest.raises(wire.MultipartError, match=match):
        wire.parse_multipart(ctype, body)


def test_quoted_boundary_and_wav() -> None:
    ctype, body = wire.encode_multipart({"a": "1"}, {}, boundary="x y")
    _, _, tail = ctype.partition("boundary=")
    fields, files = wire.parse_multipart(f'multipart/form-data; boundary="{tail}"', body)
    assert fields == {"a": "1"}
    assert files == {}
    pcm = bytes(range(200))
    assert wire.wav_pcm(wire.wav_bytes(pcm, 8000, 2)) == (pcm, 8000, 2)
    with pytest.raises(ValueError, match="WAV"):
        wire.wav_pcm(b"RIFF....nope")
