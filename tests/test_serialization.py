import datetime
import decimal

import pytest

from conveyor.errors import PayloadError
from conveyor.serialization import decode_payload, encode_payload, encode_result


def test_round_trip_of_json_values():
    text = encode_payload("t", (1, "a", [1.5, None, True]), {"k": {"n": [1, 2]}})
    assert decode_payload(text) == ([1, "a", [1.5, None, True]], {"k": {"n": [1, 2]}})


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((datetime.date(2026, 1, 1),), {}, "argument 0 has type datetime.date"),
        ((), {"amount": decimal.Decimal("1.5")}, "argument 'amount' has type decimal.Decimal"),
        ((), {"tags": {"a", "b"}}, "argument 'tags' has type set"),
        (([1, object()],), {}, r"argument 0\[1\] has type object"),
        ((), {"data": {"when": b"x"}}, r"argument 'data'\['when'\] has type bytes"),
        (({1: "a"},), {}, "has a key 1 of type int"),
        ((float("nan"),), {}, "argument 0 is nan"),
        ((2**70,), {}, "integer too large"),
    ],
)
def test_what_json_cannot_carry_is_refused_with_its_name(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        encode_payload("send-email", args, kwargs)


def test_message_names_the_task():
    with pytest.raises(TypeError, match="cannot enqueue 'send-email'"):
        encode_payload("send-email", ({1, 2},), {})


def test_size_limit():
    encode_payload("t", ("x" * 1000,), {}, max_bytes=2000)
    with pytest.raises(PayloadError, match="more than the 2,000-byte limit"):
        encode_payload("t", ("x" * 3000,), {}, max_bytes=2000)


@pytest.mark.parametrize("text", ["not json", "{}", "[1, 2]", '[[1], "x"]'])
def test_corrupt_payloads_raise_value_error(text):
    with pytest.raises(ValueError, match="corrupt payload"):
        decode_payload(text)


def test_results_are_checked_too():
    assert encode_result({"ok": [1, 2]}) == '{"ok":[1,2]}'
    with pytest.raises(TypeError, match="the return value has type set"):
        encode_result({1, 2})
