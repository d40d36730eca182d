"""The Open Inference Protocol codec without a server: bodies written and read by the real
``tritonclient`` (its request encoder and response parser), validation against signatures."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from underlay.errors import InvalidInput, PayloadTooLarge
from underlay.ml.flavors.signature import Signature, infer_signature
from underlay.serving import v2, v2_response

X = np.random.RandomState(0).normal(size=(50, 20))
TABLE_SIG = infer_signature(X, np.zeros(50, dtype=np.int64))
COLUMNS_SIG = infer_signature(
    {
        "age": np.array([30, 40, 50]),
        "income": np.array([1.0, np.nan, 3.0]),
        "city": np.array(["a", "b", "c"]),
    }
)


def _compiled(sig: Signature = TABLE_SIG, **kw: Any) -> v2.CompiledSignature:
    return v2.compile_signature(sig, **kw)


def _body(
    arrays: dict[str, np.ndarray[Any, Any]],
    *,
    binary: bool = True,
    datatypes: dict[str, str] | None = None,
    outputs: list[InferRequestedOutput] | None = None,
) -> tuple[bytes, int | None]:
    inputs = []
    for name, array in arrays.items():
        dt = (datatypes or {}).get(name) or v2.v2_datatype(array.dtype)
        item = InferInput(name, list(array.shape), dt)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    body, json_size = InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return bytes(body), json_size


@pytest.mark.parametrize("binary", [True, False])
def test_a_tritonclient_request_decodes_to_the_arrays_it_sent(binary: bool) -> None:
    batch = X[:3]
    body, header = _body({"input": batch}, binary=binary)
    request = v2.decode_infer_request(body, header, _compiled())
    assert request.rows == 3
    np.testing.assert_array_equal(request.inputs["input"], batch)
    assert request.inputs["input"].dtype == np.float64


def test_fp32_widens_into_a_float64_model_but_fp64_into_int_is_refused() -> None:
    body, header = _body({"input": X[:2].astype(np.float32)})
    request = v2.decode_infer_request(body, header, _compiled())
    assert request.inputs["input"].dtype == np.float64
    sig = infer_signature({"n": np.array([1, 2], dtype=np.int32)})
    body, header = _body({"n": np.array([1.5, 2.0])})
    with pytest.raises(InvalidInput, match=r"model input 'n' must be INT32.*got FP64"):
        v2.decode_infer_request(body, header, _compiled(sig))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"input": X[:2, :19]}, r"model input 'input' must have shape \[-1, 20\], got \[2, 19\]"),
        ({"input": X[0]}, r"model input 'input' must have shape \[-1, 20\], got \[20\]"),
        ({"input": X[:2].astype(str).astype(np.object_)}, r"'input' must be FP64, got BYTES"),
        ({"input": X[:2] > 0}, r"'input' must be FP64, got BOOL"),
        ({"other": X[:2]}, r"model input 'other' is unknown \(the model takes input\)"),
        ({"input": np.where(X[:3] > 1, np.nan, X[:3])}, r"'input' holds NaN or infinity"),
        ({"input": X[:0]}, r"at least one row"),
    ],
)
def test_bad_tensors_are_refused_naming_the_input(
    arrays: dict[str, np.ndarray[Any, Any]], match: str
) -> None:
    for binary in (True, False):
        if not binary and arrays.get("input") is not None and arrays["input"].dtype == object:
            continue  # tritonclient itself sends text JSON-encoded; covered by the binary case
        body, header = _body(arrays, binary=binary)
        with pytest.raises(InvalidInput, match=match):
            v2.decode_infer_request(body, header, _compiled())


def test_missing_inputs_and_mismatched_rows_are_refused() -> None:
    body, header = _body({"age": np.array([1, 2])})
    with pytest.raises(InvalidInput, match=r"model input '(income|city)' is missing"):
        v2.decode_infer_request(body, header, _compiled(COLUMNS_SIG))
    arrays = {
        "age": np.array([1, 2]),
        "income": np.array([1.0]),
        "city": np.array([b"x", b"y"], dtype=np.object_),
    }
    body, header = _body(arrays)
    with pytest.raises(InvalidInput, match=r"model input 'income' has 1 rows, the others 2"):
        v2.decode_infer_request(body, header, _compiled(COLUMNS_SIG))


def test_text_inputs_and_nan_where_the_training_example_had_nan() -> None:
    arrays = {
        "age": np.array([31, 41]),
        "income": np.array([np.nan, 2.0]),
        "city": np.array(["zürich", "b"], dtype=np.object_),
    }
    for binary in (True, False):
        body, header = _body(arrays, binary=binary)
        request = v2.decode_infer_request(body, header, _compiled(COLUMNS_SIG))
        assert request.inputs["city"].tolist() == ["zürich", "b"]
        assert np.isnan(request.inputs["income"][0])


def test_malformed_bodies_are_invalid_input_never_a_crash() -> None:
    sig = _compiled()
    good, header = _body({"input": X[:2]})
    assert header is not None
    cases: list[tuple[bytes, Any, str]] = [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty list 'inputs'"),
        (b'{"inputs": [{"name": "input", "datatype": "FP128", "shape": [1, 20]}]}', None,
         "datatype 'FP128'"),
        (b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, -20]}]}', None,
         "non-negative ints"),
        (b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 20], "data": [1]}]}',
         None, "holds 1 values but its shape wants 20"),
        (b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": ["a", 1]}]}',
         None, "holds text values"),
        (b'{"inputs": [' + b",".join([b'{"name": "input", "datatype": "FP64", "shape": [1, 2],'
         b' "data": [1, 2]}'] * 2) + b"]}", None, "model input 'input' is given twice"),
        (good, header + 5, "does not fit a body|not valid JSON"),
        (good, "x", "is not a number"),
        (good[:-8], header, "past the end of the body"),
        (good + b"\0" * 8, header, "the binary part holds"),
    ]  # fmt: skip
    for body, length, match in cases:
        with pytest.raises(InvalidInput, match=match):
            v2.decode_infer_request(body, length, sig)


def test_a_body_over_the_limit_is_refused_from_its_declared_length() -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        v2.check_body_size(str(100 * 1024 * 1024))
    v2.check_body_size("1000")
    body, header = _body({"input": X[:2]})
    with pytest.raises(PayloadTooLarge):
        v2.decode_infer_request(body, header, _compiled(), limit=100)


def test_ranges_are_a_gate_only_when_asked() -> None:
    far = X[:2] + 100.0
    body, header = _body({"input": far})
    v2.decode_infer_request(body, header, _compiled())
    with pytest.raises(InvalidInput, match="outside the range seen in training"):
        v2.decode_infer_request(body, header, _compiled(ranges="reject"))
    near, near_header = _body({"input": X[:5]})
    v2.decode_infer_request(near, near_header, _compiled(ranges="reject"))


@pytest.mark.parametrize("binary", [True, False])
def test_responses_parse_with_tritonclient(binary: bool) -> None:
    body, header = _body(
        {"input": X[:3]}, outputs=[InferRequestedOutput("output", binary_data=binary)]
    )
    request = v2.decode_infer_request(body, header, _compiled())
    assert request.outputs == ["output"]
    outputs = {"output": np.array([1, 0, 1]), "proba": np.array([0.1, 0.2, 0.3])}
    raw, headers = v2_response.encode_infer_response("churn", 3, outputs, request)
    length = headers.get(v2.HEADER_LENGTH)
    assert (length is not None) is binary
    result = InferenceServerClient.parse_response_body(
        raw, header_length=None if length is None else int(length)
    )
    np.testing.assert_array_equal(result.as_numpy("output"), [1, 0, 1])
    assert result.as_numpy("proba") is None
    assert result.get_response()["model_version"] == "3"


def test_without_named_outputs_tritonclient_gets_every_output_in_binary() -> None:
    body, header = _body({"input": X[:2]})
    request = v2.decode_infer_request(body, header, _compiled())
    texts = np.array(["yes", "no"], dtype=np.object_)
    raw, headers = v2_response.encode_infer_response("m", 1, {"output": texts}, request)
    result = InferenceServerClient.parse_response_body(
        raw, header_length=int(headers[v2.HEADER_LENGTH])
    )
    assert [t.decode() for t in result.as_numpy("output")] == ["yes", "no"]


def test_unknown_requested_outputs_are_refused() -> None:
    body, header = _body({"input": X[:2]}, outputs=[InferRequestedOutput("nope")])
    with pytest.raises(InvalidInput, match="model output 'nope' is unknown"):
        v2.decode_infer_request(body, header, _compiled())


def test_records_become_inputs_for_tables_and_for_matrices() -> None:
    records = [{"age": 30, "income": 1.5, "city": "a"}, {"age": 41, "income": None, "city": "b"}]
    with pytest.raises(InvalidInput, match="feature 'income' must be a number"):
        v2.records_to_inputs(records, _compiled(COLUMNS_SIG))
    records[1]["income"] = 2.0
    arrays = v2.records_to_inputs(records, _compiled(COLUMNS_SIG))
    assert arrays["age"].tolist() == [30, 41] and arrays["city"].tolist() == ["a", "b"]
    matrix = v2.records_to_inputs([list(X[0]), {"input": list(X[1])}], _compiled())
    np.testing.assert_array_equal(matrix["input"], X[:2])
    bad = [
        ([{"age": 1, "income": 1.0}], "records\\[0\\] lacks feature 'city'"),
        ([{"age": 1, "income": 1.0, "city": "a", "x": 1}], "does not take"),
        ([{"age": 1.5, "income": 1.0, "city": "a"}], "'age' must be a whole number"),
        ([{"age": "1", "income": 1.0, "city": "a"}], "'age' must be a number"),
        ([{"age": 1, "income": 1.0, "city": 3}], "'city' must be text"),
        ([], "non-empty list"),
        ([[1, 2]], "must be an object"),
    ]
    for rows, match in bad:
        with pytest.raises(InvalidInput, match=match):
            v2.records_to_inputs(rows, _compiled(COLUMNS_SIG))
    with pytest.raises(InvalidInput, match="'input' must have shape"):
        v2.records_to_inputs([[1.0, 2.0]], _compiled())


def test_metadata_describes_the_server_and_the_models_tensors() -> None:
    assert "binary_tensor_data" in v2_response.server_metadata()["extensions"]
    meta = v2_response.model_metadata("churn", 4, COLUMNS_SIG)
    assert meta["versions"] == ["4"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]} == {
        "age": ("INT64", [-1]),
        "income": ("FP64", [-1]),
        "city": ("BYTES", [-1]),
    }
    assert json.loads(json.dumps(v2_response.error_body("x"))) == {"error": "x"}


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    import gzip
    import zlib

    body, header = _body({"input": X[:3]})
    for packed, encoding in ((gzip.compress(body), "gzip"), (zlib.compress(body), "deflate")):
        plain = v2.decompress_body(packed, encoding)
        assert v2.decode_infer_request(plain, header, _compiled()).rows == 3
    assert v2.decompress_body(body, None) == body
    bomb = gzip.compress(b"\0" * 5_000_000)
    with pytest.raises(PayloadTooLarge, match="inflated request body is over the limit"):
        v2.decompress_body(bomb, "gzip", limit=1_000_000)
    with pytest.raises(InvalidInput, match="cannot be inflated"):
        v2.decompress_body(b"not gzip", "gzip")
    with pytest.raises(InvalidInput, match="cut short"):
        v2.decompress_body(gzip.compress(body)[:-20], "gzip")
    with pytest.raises(InvalidInput, match="'br' is not supported"):
        v2.decompress_body(body, "br")
