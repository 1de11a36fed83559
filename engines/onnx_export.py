"""Build Whisper's encoder and decoder as ONNX graphs (opset 17) straight from numpy weights.

The graphs follow the contract in docs/architecture.md. The design choices and why:

* Fixed-size self-attention cache ``self_k``/``self_v`` [layers, batch, n_text_ctx, state] plus a
  per-sequence ``offset``: every shape except batch and ``n_tokens`` is static, so TensorRT needs a
  single optimisation profile and the cache lives in one device buffer for a whole 30-s window.
  The decoder takes each layer's slice of that buffer as its own input (``self_k.0`` ...): a
  caller passes views of its one buffer for free, whereas a graph that sliced one stacked
  input would make ONNX Runtime copy every slice, a full pass over all caches at every step.
  The graph never writes the cache; it returns only the new rows (``new_k``/``new_v``) and the
  caller writes them at ``offset``. Cache rows ``>= offset`` are masked in-graph.
* Cross-attention keys/values of every decoder layer are projected once per window by the
  encoder graph (one MatMul for all layers' keys, one for values), not at every decoder step,
  and handed over split into heads, the layout the decoder's attention reads them in.
* Queries and keys are pre-scaled by d_head**-0.25 (folded into the weights, as openai-whisper
  scales both), so no Mul node per step and ``cross_k``/``new_k`` are stored pre-scaled.
* A decoder step of a small model is bound by memory traffic and per-node overhead, not by
  arithmetic: q/k/v are one MatMul, LayerNormalization is one node, GELU is spelled as the Erf
  pattern ONNX Runtime fuses into one kernel, self-attention reads the cache in place (see
  ``attend_rows``), and logits are computed for the last position only.
* The tied token embedding is stored once: Gather reads it for embeddings and Gemm(transB=1)
  reads it for the logits. The int8 decoder keeps one int8 copy for both (``quantize_int8``).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgescribe.engines.runtime import KV_TENSORS, cross_layer_shape, layer_input
from edgescribe.engines.weights import WhisperWeights

log = logging.getLogger(__name__)

OPSET = 17
LAYER_NORM_EPSILON = 1e-5
# Added to masked attention scores; softmax turns them into zeros. A row is never fully masked
# (a token always sees itself), so no row of all-masked scores can turn into NaN.
MASK_VALUE = -1e9
# Key position of an unused cache row: later than any query, so the causal test rejects it.
# Fits in int32, which TensorRT may narrow int64 tensors to.
NEVER = 1 << 30
# Symbolic dimensions of the window: mel frames (up to 2 * n_audio_ctx, even) and the encoder
# positions they become, which the decoder's cross-attention reads.
MEL = "mel"  # the encoder's input
FRAMES = "frames"
AUDIO_CTX = "audio_ctx"
EMBEDDING = "decoder.token_embedding.weight"
LOGITS_WEIGHT = "decoder.logits.weight"  # the int8 decoder's transposed copy of EMBEDDING


class _GraphBuilder:
    """Collects nodes and initializers; names every intermediate uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant initializer, shared between uses."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.weight(self.fresh("const"), array)
        return self._constants[key]

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        names = outputs if isinstance(outputs, list) else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(op_type), **attrs))
        return names[0] if len(names) == 1 else names

    # -- layers ---------------------------------------------------------------------------

    def layer_norm(self, x: str, weights: WhisperWeights, prefix: str) -> str:
        scale = self.weight(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=LAYER_NORM_EPSILON)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ weight.T + bias, with the weight stored transposed ([in, out]) for MatMul."""
        y = self.op("MatMul", [x, self.weight(f"{name}.weight", weight.T)])
        if bias is not None:
            y = self.op("Add", [y, self.weight(f"{name}.bias", bias)])
        return y

    def gelu(self, x: str) -> str:
        # 0.5 * x * (1 + erf(x / sqrt(2))): the exact node pattern ORT's GeluFusion matches.
        scaled = self.op("Div", [x, self.const(np.sqrt(2.0), np.float32)])
        erf = self.op("Erf", [scaled])
        plus_one = self.op("Add", [erf, self.const(1.0, np.float32)])
        return self.op("Mul", [self.op("Mul", [x, plus_one]), self.const(0.5, np.float32)])

    def mlp(self, x: str, weights: WhisperWeights, prefix: str) -> str:
        h = self.layer_norm(x, weights, f"{prefix}.mlp_ln")
        h = self.linear(h, weights[f"{prefix}.mlp.0.weight"], weights[f"{prefix}.mlp.0.bias"], f"{prefix}.mlp.0")
        h = self.gelu(h)
        h = self.linear(h, weights[f"{prefix}.mlp.2.weight"], weights[f"{prefix}.mlp.2.bias"], f"{prefix}.mlp.2")
        return self.op("Add", [x, h])

    def heads(self, x: str, n_head: int, d_head: int, perm: list[int]) -> str:
        """[batch, time, state] -> [batch, head, time, d_head] (or keys transposed, by perm)."""
        split = self.op("Reshape", [x, self.const([0, 0, n_head, d_head])])
        return self.op("Transpose", [split], perm=perm)

    def merge_heads(self, x: str, state: int) -> str:
        merged = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [merged, self.const([0, 0, state])])

    def attend(self, q: str, k_t: str, v: str, mask: str | None) -> str:
        scores = self.op("MatMul", [q, k_t])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        return self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])

    def attend_rows(self, q: str, keys: str, values: str, heads: _Heads, mask: str) -> str:
        """Masked multi-head attention that reads keys/values in their stored [B, T, state] layout
        (the decoder's self-attention: its cache grows a row per token, so it is never split).

        Splitting keys and values into heads needs transposes, i.e. copying the whole cache at
        every decoder step. Instead the few query rows are spread into a block-diagonal matrix
        (query n, head h keeps only head h's columns), so one plain MatMul against the untouched
        keys yields every head's scores; values are multiplied the same way and each head keeps
        its own columns. The extra multiply-adds by zero are cheaper than moving the cache
        through memory again.
        """
        q_heads = self.op("Mul", [self.op("Unsqueeze", [q, self.const([2])]), heads.mask])  # [B, N, H, d]
        q_rows = self.op("Reshape", [q_heads, self.const([0, -1, heads.state])])  # [B, N*H, d]
        # keys^T is never materialised: ONNX Runtime folds the Transpose into the MatMul (transB)
        # and TensorRT reads transposed operands natively.
        scores = self.op("MatMul", [q_rows, self.op("Transpose", [keys], perm=[0, 2, 1])])  # [B, N*H, T]
        scores = self.op("Add", [self.op("Reshape", [scores, heads.rows_shape]), mask])  # [B, N, H, T]
        probs = self.op("Softmax", [scores], axis=-1)
        rows = self.op("MatMul", [probs, self.op("Unsqueeze", [values, self.const([1])])])  # [B, N, H, d]
        return self.op("ReduceSum", [self.op("Mul", [rows, heads.mask]), self.const([2])], keepdims=0)


@dataclass(frozen=True)
class _Heads:
    state: int
    mask: str  # [H, state] 1 where a state column belongs to the head
    rows_shape: str  # [B, N, H, -1]


def _head_mask(n_head: int, d_head: int) -> np.ndarray:
    """[head, state]: 1 where a state column belongs to the head."""
    return np.kron(np.eye(n_head, dtype=np.float32), np.ones((1, d_head), np.float32))


def _fused_qkv(weights: WhisperWeights, prefix: str, d_head: int) -> tuple[np.ndarray, np.ndarray]:
    """One [3d, d] projection for q/k/v with Whisper's d_head**-0.25 folded into q and k."""
    scale = np.float32(d_head ** -0.25)
    q_w, k_w, v_w = (weights[f"{prefix}.{p}.weight"] for p in ("query", "key", "value"))
    q_b, v_b = weights[f"{prefix}.query.bias"], weights[f"{prefix}.value.bias"]
    weight = np.concatenate([q_w * scale, k_w * scale, v_w], axis=0)
    bias = np.concatenate([q_b * scale, np.zeros_like(v_b), v_b])
    return weight.astype(np.float32), bias.astype(np.float32)


def build_encoder(weights: WhisperWeights) -> onnx.ModelProto:
    dims = weights.dims
    g = _GraphBuilder()
    d, n_head = dims.n_audio_state, dims.n_audio_head
    d_head = d // n_head

    conv1 = g.op("Conv", [MEL, g.weight("encoder.conv1.weight", weights["encoder.conv1.weight"]),
                          g.weight("encoder.conv1.bias", weights["encoder.conv1.bias"])],
                 kernel_shape=[3], pads=[1, 1])
    x = g.gelu(conv1)
    conv2 = g.op("Conv", [x, g.weight("encoder.conv2.weight", weights["encoder.conv2.weight"]),
                          g.weight("encoder.conv2.bias", weights["encoder.conv2.bias"])],
                 kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.op("Transpose", [g.gelu(conv2)], perm=[0, 2, 1])
    # The window may be shorter than 30 s (engines/encoder_window.py): its positions are the
    # first rows of the embedding, as they are for the start of a full window.
    positions = g.op("Shape", [x], start=1, end=2)
    embedding = g.weight("encoder.positional_embedding", weights["encoder.positional_embedding"])
    x = g.op("Add", [x, g.op("Slice", [embedding, g.const([0]), positions, g.const([0])])])

    for i in range(dims.n_audio_layer):
        prefix = f"encoder.blocks.{i}"
        h = g.layer_norm(x, weights, f"{prefix}.attn_ln")
        # Three projections rather than one fused: with 1500 rows each MatMul is efficient on
        # its own, and splitting a fused [1500, 3d] result would copy it once more.
        qkv_w, qkv_b = _fused_qkv(weights, f"{prefix}.attn", d_head)
        (q_w, k_w, v_w), (q_b, _, v_b) = np.split(qkv_w, 3), np.split(qkv_b, 3)
        q = g.linear(h, q_w, q_b, f"{prefix}.attn.query")
        k = g.linear(h, k_w, None, f"{prefix}.attn.key")  # Whisper's keys have no bias
        v = g.linear(h, v_w, v_b, f"{prefix}.attn.value")
        q = g.heads(q, n_head, d_head, perm=[0, 2, 1, 3])
        k_t = g.heads(k, n_head, d_head, perm=[0, 2, 3, 1])
        v = g.heads(v, n_head, d_head, perm=[0, 2, 1, 3])
        attended = g.merge_heads(g.attend(q, k_t, v, mask=None), d)
        out = g.linear(attended, weights[f"{prefix}.attn.out.weight"], weights[f"{prefix}.attn.out.bias"],
                       f"{prefix}.attn.out")
        x = g.mlp(g.op("Add", [x, out]), weights, prefix)
    x = g.layer_norm(x, weights, "encoder.ln_post")

    # Cross-attention keys (and values) of all decoder layers in one MatMul each, once per
    # window: [B, T, L*d] -> [L, B, H, T, d_head], split into heads here rather than at every
    # decoder step. Keys carry Whisper's d_head**-0.25 like the queries.
    n_text_head = dims.n_text_head
    d_text_head = dims.n_text_state // n_text_head
    scale = np.float32(d_text_head ** -0.25)
    layers = range(dims.n_text_layer)
    for output, part in (("cross_k", "key"), ("cross_v", "value")):
        weight = np.concatenate([weights[f"decoder.blocks.{i}.cross_attn.{part}.weight"] for i in layers], axis=0)
        bias = None
        if part == "key":
            weight = weight * scale
        else:
            bias = np.concatenate([weights[f"decoder.blocks.{i}.cross_attn.value.bias"] for i in layers])
        projected = g.linear(x, weight.astype(np.float32), bias, f"decoder.cross_attn.{part}")
        projected = g.op("Reshape", [projected, g.const([0, 0, dims.n_text_layer, n_text_head, d_text_head])])
        g.op("Transpose", [projected], outputs=[output], perm=[2, 0, 3, 1, 4])

    cross_shape = [dims.n_text_layer, *cross_layer_shape(dims, "batch", AUDIO_CTX)]
    graph = helper.make_graph(
        g.nodes, "whisper_encoder",
        inputs=[helper.make_tensor_value_info(MEL, TensorProto.FLOAT, ["batch", dims.n_mels, FRAMES])],
        outputs=[helper.make_tensor_value_info("cross_k", TensorProto.FLOAT, cross_shape),
                 helper.make_tensor_value_info("cross_v", TensorProto.FLOAT, cross_shape)],
        initializer=g.initializers,
    )
    return _model(graph)


def build_decoder(weights: WhisperWeights, for_int8: bool = False) -> onnx.ModelProto:
    """The decoder graph.

    ``for_int8`` builds the graph that ``quantize_int8`` turns into the ONNX Runtime-only int8
    decoder: the logits projection gets its own transposed initializer (dynamic quantisation
    only rewrites MatMul weights), and attention skips the unused cache rows, a data-dependent
    shape TensorRT's single profile would not take.
    """
    dims = weights.dims
    g = _GraphBuilder()
    d, n_head = dims.n_text_state, dims.n_text_head
    d_head = d // n_head

    # Positions of the new tokens: offset[b] + arange(n_tokens).
    n_tokens = g.op("Squeeze", [g.op("Shape", ["tokens"], start=1, end=2), g.const([0])])
    steps = g.op("Range", [g.const(0), n_tokens, g.const(1)])
    offset = g.op("Unsqueeze", ["offset", g.const([1])])
    positions = g.op("Add", [offset, steps])  # [B, N]

    embedding = g.weight(EMBEDDING, weights[EMBEDDING])
    x = g.op("Add", [g.op("Gather", [embedding, "tokens"]),
                     g.op("Gather", [g.weight("decoder.positional_embedding", weights["decoder.positional_embedding"]),
                                     positions])])

    # Additive mask over keys = [cache rows | new rows], built once for all layers. Every key gets
    # a position (unused cache rows get NEVER); a query at position p sees keys at positions <= p.
    cache_rows = g.const(np.arange(dims.n_text_ctx))
    used_rows = None
    if for_int8:
        # ONNX Runtime only (int8 graphs never go to TensorRT): attend to the cache rows in use,
        # rows [0, max(offset)), instead of all n_text_ctx rows. Early in a window that is a
        # tenth of the cache, and every step reads the cache of every layer.
        used_rows = g.op("ReduceMax", ["offset"], keepdims=1)  # [1]
        cache_rows = g.op("Slice", [cache_rows, g.const([0]), used_rows])
    cache_pos = g.op("Where", [g.op("Less", [cache_rows, offset]), cache_rows, g.const(NEVER)])  # [B, C]
    key_pos = g.op("Concat", [cache_pos, positions], axis=1)  # [B, C + N]
    visible = g.op("LessOrEqual", [g.op("Unsqueeze", [key_pos, g.const([1])]),
                                   g.op("Unsqueeze", [positions, g.const([2])])])  # [B, N, C + N]
    mask = g.op("Where", [visible, g.const(0.0, np.float32), g.const(MASK_VALUE, np.float32)])
    mask = g.op("Unsqueeze", [mask, g.const([2])])  # [B, N, 1, C + N]

    heads = _Heads(d, g.const(_head_mask(n_head, d_head), np.float32),
                   g.op("Concat", [g.op("Shape", ["tokens"]), g.const([n_head, -1])], axis=0))
    kv = {name: [layer_input(name, i) for i in range(dims.n_text_layer)] for name in KV_TENSORS}
    if used_rows is not None:
        for name in ("self_k", "self_v"):
            kv[name] = [g.op("Slice", [rows, g.const([0]), used_rows, g.const([1])]) for rows in kv[name]]

    new_k, new_v = [], []
    for i in range(dims.n_text_layer):
        prefix = f"decoder.blocks.{i}"
        # Self-attention over the cache plus the new rows.
        h = g.layer_norm(x, weights, f"{prefix}.attn_ln")
        qkv_w, qkv_b = _fused_qkv(weights, f"{prefix}.attn", d_head)
        qkv = g.linear(h, qkv_w, qkv_b, f"{prefix}.attn.qkv")
        q, k, v = g.op("Split", [qkv, g.const([d, d, d])], outputs=3, axis=-1)
        new_k.append(g.op("Unsqueeze", [k, g.const([0])]))
        new_v.append(g.op("Unsqueeze", [v, g.const([0])]))
        keys = g.op("Concat", [kv["self_k"][i], k], axis=1)
        values = g.op("Concat", [kv["self_v"][i], v], axis=1)
        attended = g.attend_rows(q, keys, values, heads, mask)
        out = g.linear(attended, weights[f"{prefix}.attn.out.weight"],
                       weights[f"{prefix}.attn.out.bias"], f"{prefix}.attn.out")
        x = g.op("Add", [x, out])

        # Cross-attention over the encoder's pre-projected keys/values.
        h = g.layer_norm(x, weights, f"{prefix}.cross_attn_ln")
        scale = np.float32(d_head ** -0.25)
        q = g.linear(h, weights[f"{prefix}.cross_attn.query.weight"] * scale,
                     weights[f"{prefix}.cross_attn.query.bias"] * scale, f"{prefix}.cross_attn.query")
        # Keys and values come split into heads ([B, H, T, d_head]), so each head's scores are
        # one matrix-vector product per query row; the Transpose folds into the MatMul.
        k_t = g.op("Transpose", [kv["cross_k"][i]], perm=[0, 1, 3, 2])
        attended = g.attend(g.heads(q, n_head, d_head, perm=[0, 2, 1, 3]), k_t, kv["cross_v"][i], None)
        out = g.linear(g.merge_heads(attended, d), weights[f"{prefix}.cross_attn.out.weight"],
                       weights[f"{prefix}.cross_attn.out.bias"], f"{prefix}.cross_attn.out")
        x = g.mlp(g.op("Add", [x, out]), weights, prefix)

    g.op("Concat", new_k, outputs=["new_k"], axis=0)
    g.op("Concat", new_v, outputs=["new_v"], axis=0)

    # Logits of the last position only: the vocabulary projection is the costliest op of a step.
    last = g.op("Squeeze", [g.op("Slice", [x, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([1])]),
                            g.const([1])])  # [B, d]
    last = g.layer_norm(last, weights, "decoder.ln")
    if for_int8:
        projection = g.weight(LOGITS_WEIGHT, weights[EMBEDDING].T)
        g.op("MatMul", [last, projection], outputs=["logits"])
    else:
        g.op("Gemm", [last, embedding], outputs=["logits"], transB=1)

    cache_shape = [dims.n_text_layer, "batch", dims.n_text_ctx, d]
    cross_shape = [dims.n_text_layer, *cross_layer_shape(dims, "batch", AUDIO_CTX)]
    new_shape = [dims.n_text_layer, "batch", "n_tokens", d]
    cache_inputs = [helper.make_tensor_value_info(layer_input(name, i), TensorProto.FLOAT, shape[1:])
                    for name, shape in (("self_k", cache_shape), ("self_v", cache_shape),
                                        ("cross_k", cross_shape), ("cross_v", cross_shape))
                    for i in range(dims.n_text_layer)]
    graph = helper.make_graph(
        g.nodes, "whisper_decoder",
        inputs=[
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "n_tokens"]),
            helper.make_tensor_value_info("offset", TensorProto.INT64, ["batch"]),
            *cache_inputs,
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dims.n_vocab]),
            helper.make_tensor_value_info("new_k", TensorProto.FLOAT, new_shape),
            helper.make_tensor_value_info("new_v", TensorProto.FLOAT, new_shape),
        ],
        initializer=g.initializers,
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgescribe")
    model.ir_version = 8  # ONNX 1.13 / TensorRT 8.6+ read IR 8; newer IRs add nothing we use
    onnx.checker.check_model(model, full_check=False)
    return model


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write one self-contained file (each Whisper graph here stays under protobuf's 2 GB limit)."""
    path.write_bytes(model.SerializeToString())


def quantize_int8(model: onnx.ModelProto, path: Path) -> None:
    """Dynamic int8 quantisation of every MatMul weight (symmetric, per output channel), for
    ONNX Runtime, written to ``path``.

    Activations stay float32 and are quantised per call, so no calibration data is needed: the
    encoder's per frame (``_scale_per_row``), the decoder's per tensor.
    Convolutions and attention (activation x activation) stay float32: ORT's integer versions
    of those measured slower here than the float kernels.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=path.parent) as temp:
        source = Path(temp) / "float.onnx"
        save(model, source)
        logging.disable(logging.WARNING)  # the quantizer's root-logger advice on pre-processing
        try:
            quantize_dynamic(source, path, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        finally:
            logging.disable(logging.NOTSET)
    quantized = onnx.load(str(path))
    if quantized.graph.input[0].name == MEL:
        _scale_per_row(quantized)
    elif not _share_int8_embedding(quantized):
        return
    save(quantized, path)


def _scale_per_row(model: onnx.ModelProto) -> None:
    """Quantise each row (audio frame) of every encoder MatMul input with its own scale.

    ``quantize_dynamic`` rounds an activation with one scale for the whole tensor, taken from
    its largest value. In the encoder that couples every frame to every other: the padding of a
    30-s window, another window of the same batch, or a shorter window of the same audio all
    move the rounding of the speech's frames, and so the text. One scale per frame makes each
    frame's rounding its own (a window's K/V is the same alone or batched) and finer, which is
    what brings int8 text within the gates of adaptive windows (docs/benchmarks.md). The
    decoder keeps per-tensor scales: its rows are few and per-row steps measured slower.

    Rewrites DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale) into
    row scale = max|x| / 127 over the last axis; q = round(x / row scale) + 128 (symmetric
    uint8); MatMulIntegerToFloat(q, w, 1, w_scale, 128, w_zero_point) * row scale.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph.initializer.extend([
        numpy_helper.from_array(np.array(1.0, np.float32), "row_quant.unit_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "row_quant.zero_point"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "row_quant.tiny"),
        numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "row_quant.per_step"),
    ])
    # Each replaced node follows its DynamicQuantizeLinear (the graph is in topological order),
    # so it is known to be replaced by the time the loop reaches it.
    rewritten, replaced = [], set()
    for node in graph.node:
        if id(node) in replaced:
            continue
        if node.op_type != "DynamicQuantizeLinear":
            rewritten.append(node)
            continue
        x, (quantized, x_scale, _x_zero_point) = node.input[0], node.output
        stem = f"{x}.row"
        rewritten += [
            helper.make_node("Abs", [x], [f"{stem}_abs"]),
            helper.make_node("ReduceMax", [f"{stem}_abs"], [f"{stem}_max"], axes=[-1], keepdims=1),
            helper.make_node("Max", [f"{stem}_max", "row_quant.tiny"], [f"{stem}_nonzero"]),
            helper.make_node("Mul", [f"{stem}_nonzero", "row_quant.per_step"], [f"{stem}_scale"]),
            helper.make_node("Div", [x, f"{stem}_scale"], [f"{stem}_steps"]),
            helper.make_node("QuantizeLinear", [f"{stem}_steps", "row_quant.unit_scale", "row_quant.zero_point"],
                             [quantized]),
        ]
        for matmul in consumers[quantized]:
            (cast,) = consumers[matmul.output[0]]
            (rescale,) = consumers[cast.output[0]]
            scales = next(n for n in consumers[x_scale] if n.output[0] in rescale.input)
            weight_scale = next(name for name in scales.input if name != x_scale)
            _, weight, _, weight_zero_point = matmul.input
            product = f"{matmul.output[0]}_float"
            rewritten_matmul = helper.make_node(
                "MatMulIntegerToFloat",
                [quantized, weight, "row_quant.unit_scale", weight_scale, "row_quant.zero_point", weight_zero_point],
                [product], domain="com.microsoft")
            replaced.update(id(n) for n in (matmul, cast, rescale, scales))
            rewritten += [rewritten_matmul, helper.make_node("Mul", [product, f"{stem}_scale"], [rescale.output[0]])]
    del graph.node[:]
    graph.node.extend(rewritten)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _share_int8_embedding(model: onnx.ModelProto) -> bool:
    """Read token embeddings from the int8 logits weight instead of a float32 copy.

    The int8 decoder needs the tied matrix transposed ([state, vocab]) for its quantised logits
    MatMul. Gathering embedding columns from that same int8 matrix, times their per-token
    scales, keeps one copy of the vocabulary-sized weight (20 MB instead of 20 + 80 MB for
    tiny) at the precision CTranslate2's int8 embeddings have.
    """
    graph = model.graph
    names = {tensor.name for tensor in graph.initializer}
    weight, scale = f"{LOGITS_WEIGHT}_quantized", f"{LOGITS_WEIGHT}_scale"
    gathers = [node for node in graph.node if node.op_type == "Gather" and node.input[0] == EMBEDDING]
    if weight not in names or scale not in names or len(gathers) != 1:
        return False
    gather = gathers[0]
    tokens, output = gather.input[1], gather.output[0]
    columns = helper.make_node("Gather", [weight, tokens], ["embedding.int8"], axis=1)  # [d, B, N]
    rows = helper.make_node("Transpose", ["embedding.int8"], ["embedding.rows"], perm=[1, 2, 0])
    as_float = helper.make_node("Cast", ["embedding.rows"], ["embedding.float"], to=TensorProto.FLOAT)
    token_scale = helper.make_node("Gather", [scale, tokens], ["embedding.scale"])
    scale_axis = numpy_helper.from_array(np.array([-1], np.int64), "embedding.scale_axis")
    token_scale_3d = helper.make_node("Unsqueeze", ["embedding.scale", "embedding.scale_axis"], ["embedding.scale3"])
    # Quantised as round(w / scale): the embedding is int8 * scale.
    embed = helper.make_node("Mul", ["embedding.float", "embedding.scale3"], [output])
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate([columns, rows, as_float, token_scale, token_scale_3d, embed]):
        graph.node.insert(position + offset, node)
    graph.initializer.append(scale_axis)
    kept = [tensor for tensor in graph.initializer if tensor.name != EMBEDDING]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return True
