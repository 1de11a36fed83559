"""Our float32 graphs against the ONNX operator matrix of TensorRT's ONNX parser.

No GPU or TensorRT parser runs here, so nothing else checks before a Jetson build that TensorRT
10.3 can import every node ``edgescribe build-engines`` feeds it. This test reads NVIDIA's own
support matrix (tests/data/onnx-tensorrt/operators.md; its README says which release and why)
and holds each float32 graph we would build to it:

* the model's opset lies in the parser's range;
* every op is in the matrix and marked supported;
* every node's element types (after ONNX shape inference) are in that op's supported types;
* the matrix's restriction for each op is checked against the node. A restriction this module
  has no check for fails the graph, so a new op or a reworded restriction gets looked at
  instead of passing unseen;
* the graph's inputs and outputs have element types TensorRT 10 takes as network I/O.

The checker also runs against broken copies of a real graph, to show that it fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import onnx
import pytest
from onnx import TensorProto, defs, helper, shape_inference

from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401 (fixtures)

MATRIX_PATH = Path(__file__).resolve().parents[1] / "data" / "onnx-tensorrt" / "operators.md"
VENDORED_RELEASE = "10.6"
# The Jetson runs TensorRT 10.3 but the vendored matrix is 10.6's (see its README). 10.6 raised
# the opset ceiling to 22 along with its ONNX 1.17 update, and 10.0's matrix says 20, so 10.3 is
# held to the narrower range.
PARSER_OPSETS = (9, 20)

DEFAULT_DOMAINS = ("", "ai.onnx")
# The matrix's type names for ONNX element types. TensorRT's FP8 is E4M3.
MATRIX_TYPE_OF = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.INT4: "INT4",
    TensorProto.FLOAT8E4M3FN: "FP8",
}
MATRIX_TYPES = frozenset(MATRIX_TYPE_OF.values())
# Upstream typos, mapped here rather than edited in the vendored copy (ConstantOfShape's row).
MATRIX_TYPE_TYPOS = {"INF64": "INT64"}
# What TensorRT 10 takes as network inputs and outputs. The matrix's header lists DOUBLE, FP32,
# FP16, BF16, INT32, INT64, FP8, INT8, INT4, UINT8 and BOOL; of those DOUBLE is only cast down,
# and INT8, INT4 and FP8 are quantized types reached only through quantization. INT64 I/O has
# needed INT64 bindings since 9.0 (the onnx-tensorrt changelog's 9.0 EA entry).
NETWORK_IO_TYPES = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"})
# ONNX schema type strings ("tensor(float)") to element types.
ELEMENT_TYPE_OF = {f"tensor({name.lower()})": value for name, value in TensorProto.DataType.items()}

REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")


# -- the matrix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: frozenset[str]
    restriction: str  # "" when the row has none


@dataclass(frozen=True)
class SupportMatrix:
    release: str
    opset_min: int
    opset_max: int
    ops: dict[str, OpSupport]


def parse_matrix(text: str, source: str) -> SupportMatrix:
    header = re.search(r"TensorRT (\S+) supports operators in the inclusive range of opset (\d+) to opset (\d+)", text)
    if header is None:
        raise ValueError(f"{source}: no 'TensorRT N supports operators in the inclusive range of opset A to opset B' line")
    ops: dict[str, OpSupport] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("## Operator Support Matrix"):
            in_table = True
            continue
        if not in_table or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = cells[0]
        if name == "Operator" or set(name) <= {"-"}:
            continue  # the table's header and its rule
        flag = cells[1] if len(cells) > 1 else ""
        if flag not in ("Y", "N"):
            raise ValueError(f"{source}:{number}: {name}'s Supported cell is {flag!r}, neither Y nor N")
        if name in ops:
            raise ValueError(f"{source}:{number}: {name} has a second row")
        tokens = [token.strip() for token in cells[2].split(",")] if len(cells) > 2 else []
        types = set()
        for token in filter(None, tokens):
            token = MATRIX_TYPE_TYPOS.get(token, token)
            if token not in MATRIX_TYPES:
                raise ValueError(f"{source}:{number}: {name} lists type {token!r}, which this test cannot map to ONNX")
            types.add(token)
        ops[name] = OpSupport(flag == "Y", frozenset(types), cells[3] if len(cells) > 3 else "")
    if not ops:
        raise ValueError(f"{source}: no rows under '## Operator Support Matrix'")
    return SupportMatrix(header.group(1), int(header.group(2)), int(header.group(3)), ops)


@pytest.fixture(scope="module")
def matrix() -> SupportMatrix:
    if not MATRIX_PATH.is_file():
        pytest.fail(f"{MATRIX_PATH} is missing (see tests/data/onnx-tensorrt/README.md)")
    try:
        return parse_matrix(MATRIX_PATH.read_text(encoding="utf-8"), str(MATRIX_PATH))
    except ValueError as error:
        pytest.fail(str(error))


# -- restrictions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphFacts:
    initializers: frozenset[str]
    constant_outputs: frozenset[str]  # outputs of Constant nodes


def _axes_source(node: onnx.NodeProto) -> Optional[str]:
    """The tensor feeding ``axes`` (input 1 since opset 13/18), or None when the axes are an
    attribute (older opsets) or absent (reduce/squeeze over every axis): neither is a tensor."""
    return node.input[1] if len(node.input) > 1 and node.input[1] else None


def _axes_from_initializer(node: onnx.NodeProto, facts: GraphFacts) -> Optional[str]:
    # Read as written: an initializer. Constant-node outputs would likely do too (the parser
    # turns them into weights), but the matrix does not say so.
    axes = _axes_source(node)
    if axes is not None and axes not in facts.initializers:
        return f"its axes come from '{axes}', which is not an initializer"
    return None


def _axes_constant(node: onnx.NodeProto, facts: GraphFacts) -> Optional[str]:
    axes = _axes_source(node)
    if axes is not None and axes not in facts.initializers | facts.constant_outputs:
        return f"its axes come from '{axes}', which is neither an initializer nor a Constant node's output"
    return None


def _first_output_only(node: onnx.NodeProto, facts: GraphFacts) -> Optional[str]:
    extra = [name for name in node.output[1:] if name]
    if extra:
        return f"it also produces {', '.join(repr(name) for name in extra)}"
    return None


RestrictionCheck = Callable[[onnx.NodeProto, GraphFacts], Optional[str]]
# Keyed by the restriction's exact text: a reworded restriction in a newer matrix has no check
# until someone reads it.
RESTRICTION_CHECKS: dict[tuple[str, str], RestrictionCheck] = {
    ("Squeeze", "`axes` must be an initializer"): _axes_from_initializer,
    ("Unsqueeze", "`axes` must be a constant tensor"): _axes_constant,
    ("LayerNormalization", "Only the first output `Y` is supported."): _first_output_only,
    **{(op, "`axes` must be an initializer"): _axes_from_initializer for op in REDUCE_OPS},
}


# -- the checker -------------------------------------------------------------------------------


def _matrix_type(element_type: int) -> str:
    return MATRIX_TYPE_OF.get(element_type) or TensorProto.DataType.Name(element_type)


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _type_problems(node: onnx.NodeProto, support: OpSupport, opset: int, types: dict[str, int]) -> list[str]:
    """Which of the node's tensors have element types outside the op's supported list.

    A slot is held to the list when the ONNX schema lets it carry at least one listed type. The
    others never can (a comparison's bool output, a bool condition for an op whose list has no
    BOOL): the list does not describe them.
    """
    schema = defs.get_schema(node.op_type, opset, "")
    allowed = {constraint.type_param_str: set(constraint.allowed_type_strs) for constraint in schema.type_constraints}
    problems = []
    for role, names, params in (("input", node.input, schema.inputs), ("output", node.output, schema.outputs)):
        for index, name in enumerate(names):
            if not name:
                continue  # an optional slot left empty
            param = _formal(params, index)
            if param is None:
                problems.append(f"{role} #{index} '{name}' has no place in the ONNX schema of {node.op_type}-{opset}")
                continue
            can_carry = {_matrix_type(ELEMENT_TYPE_OF[s]) for s in allowed.get(param.type_str, {param.type_str})
                         if s in ELEMENT_TYPE_OF}
            if not can_carry & support.types:
                continue
            element_type = types.get(name, TensorProto.UNDEFINED)
            if element_type == TensorProto.UNDEFINED:
                problems.append(f"{role} '{name}' has no element type after shape inference")
            elif _matrix_type(element_type) not in support.types:
                problems.append(f"{role} '{name}' is {_matrix_type(element_type)}")
    return problems


def check_graph(label: str, path: Path, matrix: SupportMatrix,
                opsets: tuple[int, int] = PARSER_OPSETS) -> list[str]:
    """One line per thing in the graph at ``path`` that TensorRT's parser does not support."""
    problems: list[str] = []

    def report(where: str, what: str) -> None:
        problems.append(f"{label} ({path.name}): {where}: {what}")

    model = onnx.load(str(path))
    opset = None
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            opset = entry.version
            if not opsets[0] <= entry.version <= opsets[1]:
                report("opset", f"opset {entry.version} is outside the parser's opset {opsets[0]} to {opsets[1]}")
        else:
            report("opset", f"imports domain '{entry.domain}' (version {entry.version}); the parser knows only "
                            f"ai.onnx operators and needs a plugin for anything else")
    if opset is None:
        report("opset", "imports no ai.onnx opset")
        return problems
    try:
        # strict: an op or type shape inference cannot follow is a graph we cannot vouch for
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as error:  # onnx raises several types; any of them means "not checked"
        report("shape inference", f"failed, so element types cannot be checked: {str(error).splitlines()[0]}")
        return problems

    graph = inferred.graph
    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.value_info, *graph.input, *graph.output]}
    types.update({initializer.name: initializer.data_type for initializer in graph.initializer})
    facts = GraphFacts(frozenset(initializer.name for initializer in graph.initializer),
                       frozenset(out for node in graph.node if node.op_type == "Constant" for out in node.output))

    for index, node in enumerate(graph.node):
        op = node.op_type
        where = f"node '{node.name or f'#{index}'}' ({op})"
        if node.domain not in DEFAULT_DOMAINS:
            report(where, f"domain '{node.domain}' is not ai.onnx; the parser would need a plugin for it")
            continue
        if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attribute in node.attribute):
            report(where, "has a subgraph, which this test does not check")
        support = matrix.ops.get(op)
        if support is None:
            report(where, f"{op} is not in the TensorRT {matrix.release} ONNX operator matrix")
            continue
        if not support.supported:
            report(where, f"the TensorRT {matrix.release} ONNX operator matrix lists {op} as not supported")
            continue
        if not support.types:
            report(where, f"the matrix lists no supported types for {op}, so its types cannot be checked")
        else:
            bad = _type_problems(node, support, opset, types)
            if bad:
                report(where, f"{'; '.join(bad)}: not among {op}'s supported types ({', '.join(sorted(support.types))})")
        if support.restriction:
            check = RESTRICTION_CHECKS.get((op, support.restriction))
            if check is None:
                report(where, f'the matrix restricts {op} ("{support.restriction}") and this test has no check '
                              "for that restriction, so the node is not known to be importable")
            else:
                broken = check(node, facts)
                if broken:
                    report(where, f'{broken}; the matrix says "{support.restriction}"')

    inputs = [info for info in graph.input if info.name not in facts.initializers]
    for role, infos in (("input", inputs), ("output", graph.output)):
        for info in infos:
            element_type = _matrix_type(info.type.tensor_type.elem_type)
            if element_type not in NETWORK_IO_TYPES:
                report(f"graph {role} '{info.name}'", f"{element_type} is not a TensorRT 10 network I/O type "
                                                      f"({', '.join(sorted(NETWORK_IO_TYPES))})")
    return problems


# -- our graphs --------------------------------------------------------------------------------


PACKAGES = {"tiny.en": "tiny_en_package", "base": "base_package"}  # label -> package fixture


def test_the_vendored_matrix_is_the_release_the_readme_names(matrix):
    assert matrix.release == VENDORED_RELEASE
    assert (matrix.opset_min, matrix.opset_max) == (9, 22)
    assert len(matrix.ops) > 180
    # a few rows read back as the file has them
    assert matrix.ops["LayerNormalization"] == OpSupport(True, frozenset({"FP32", "FP16", "BF16"}),
                                                         "Only the first output `Y` is supported.")
    assert matrix.ops["Unique"].supported is False
    assert matrix.ops["ConstantOfShape"].types >= {"INT64"}  # through the INF64 typo
    # the range this test enforces lies inside what the vendored release states
    assert matrix.opset_min <= PARSER_OPSETS[0] <= PARSER_OPSETS[1] <= matrix.opset_max


@pytest.mark.parametrize("label", PACKAGES)
@pytest.mark.parametrize("graph", ["encoder", "decoder", "aligner"])
def test_our_float32_graphs_import_into_tensorrt_10_3(label, graph, matrix, request):
    package = request.getfixturevalue(PACKAGES[label])
    encoder, decoder = package.graph_paths(prefer_int8=False)  # what build-engines feeds TensorRT
    # build-engines builds the aligner (word timing) too, when the package has one
    path = {"encoder": encoder, "decoder": decoder, "aligner": package.aligner_path()}[graph]
    problems = check_graph(label, path, matrix)
    assert not problems, "TensorRT 10.3's ONNX parser would not take:\n" + "\n".join(problems)


# -- the checker fails where it should ---------------------------------------------------------


@pytest.fixture
def encoder_copy(tiny_en_package, tmp_path):  # noqa: F811
    """A writable copy of the real tiny.en float32 encoder graph, and where to save it."""
    encoder, _ = tiny_en_package.graph_paths(prefer_int8=False)
    return onnx.load(str(encoder)), tmp_path / "encoder.onnx"


def _problems_after(change: Callable[[onnx.ModelProto], None], encoder_copy, matrix) -> list[str]:
    model, path = encoder_copy
    change(model)
    onnx.save(model, str(path))
    return check_graph("tiny.en broken", path, matrix)


def test_an_op_nvidia_lists_as_unsupported_fails(encoder_copy, matrix):
    def add_unique(model):
        model.graph.node.append(helper.make_node("Unique", ["mel"], ["mel_unique"], name="probe_unique"))

    assert _problems_after(add_unique, encoder_copy, matrix) == [
        "tiny.en broken (encoder.onnx): node 'probe_unique' (Unique): "
        "the TensorRT 10.6 ONNX operator matrix lists Unique as not supported"]


def test_a_type_outside_the_ops_list_fails(encoder_copy, matrix):
    # MatMul on int32 is valid ONNX, but NVIDIA lists MatMul for FP32, FP16 and BF16 only;
    # Cast and Transpose do take INT32, so only the MatMul is reported.
    def int32_matmul(model):
        model.graph.node.extend([
            helper.make_node("Cast", ["mel"], ["mel_i32"], name="probe_cast", to=TensorProto.INT32),
            helper.make_node("Transpose", ["mel_i32"], ["mel_i32_t"], name="probe_transpose", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["mel_i32", "mel_i32_t"], ["mel_gram"], name="probe_matmul"),
        ])

    assert _problems_after(int32_matmul, encoder_copy, matrix) == [
        "tiny.en broken (encoder.onnx): node 'probe_matmul' (MatMul): input 'mel_i32' is INT32; "
        "input 'mel_i32_t' is INT32; output 'mel_gram' is INT32: not among MatMul's supported types (BF16, FP16, FP32)"]


def test_an_opset_beyond_the_parsers_range_fails(encoder_copy, matrix):
    def opset_21(model):
        model.opset_import[0].version = 21

    assert _problems_after(opset_21, encoder_copy, matrix) == [
        "tiny.en broken (encoder.onnx): opset: opset 21 is outside the parser's opset 9 to 20"]


def test_a_broken_restriction_fails(encoder_copy, matrix):
    # ReduceSum's axes from a graph input, and a LayerNormalization asked for its Mean output
    def break_restrictions(model):
        graph = model.graph
        graph.input.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
        graph.node.append(helper.make_node("ReduceSum", ["mel", "axes"], ["mel_sum"], name="probe_reduce"))
        norm = next(node for node in graph.node if node.op_type == "LayerNormalization")
        norm.output.append("probe_mean")

    problems = _problems_after(break_restrictions, encoder_copy, matrix)
    norm = next(node.name for node in encoder_copy[0].graph.node if node.op_type == "LayerNormalization")
    assert problems == [
        f"tiny.en broken (encoder.onnx): node '{norm}' (LayerNormalization): it also produces 'probe_mean'; "
        "the matrix says \"Only the first output `Y` is supported.\"",
        "tiny.en broken (encoder.onnx): node 'probe_reduce' (ReduceSum): its axes come from 'axes', "
        "which is not an initializer; the matrix says \"`axes` must be an initializer\""]


def test_a_restriction_without_a_check_fails(encoder_copy, matrix):
    # TopK is supported, but under a restriction this module does not check: not passed unseen
    def add_topk(model):
        k = helper.make_tensor("probe_k", TensorProto.INT64, [1], [5])
        model.graph.initializer.append(k)
        model.graph.node.append(helper.make_node("TopK", ["mel", "probe_k"], ["top_values", "top_indices"],
                                                 name="probe_topk"))

    assert _problems_after(add_topk, encoder_copy, matrix) == [
        "tiny.en broken (encoder.onnx): node 'probe_topk' (TopK): the matrix restricts TopK "
        "(\"`sorted` must be 1. `K` input must be less than 3840.\") and this test has no check for that "
        "restriction, so the node is not known to be importable"]


def test_a_graph_io_type_tensorrt_cannot_bind_fails(encoder_copy, matrix):
    def double_input(model):
        model.graph.input.append(helper.make_tensor_value_info("scale", TensorProto.DOUBLE, [1]))

    assert _problems_after(double_input, encoder_copy, matrix) == [
        "tiny.en broken (encoder.onnx): graph input 'scale': DOUBLE is not a TensorRT 10 network I/O type "
        "(BF16, BOOL, FP16, FP32, INT32, INT64, UINT8)"]


def test_a_matrix_row_the_parser_cannot_read_is_named():
    text = MATRIX_PATH.read_text(encoding="utf-8").replace("| Erf                       | Y          |",
                                                           "| Erf                       | Maybe      |")
    with pytest.raises(ValueError, match=r"operators\.md:\d+: Erf's Supported cell is 'Maybe', neither Y nor N"):
        parse_matrix(text, "operators.md")
