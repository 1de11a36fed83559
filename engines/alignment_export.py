"""Build the aligner graph: cross-attention scores of Whisper's alignment heads, for word timing.

A graph of its own rather than an output of the decoder, so the per-step decoder stays lean
and TensorRT builds it like the other two. It runs the decoder once over a whole token
sequence (``tokens`` [batch, n_tokens] at positions 0.., causal self-attention among them, no
cache) and returns, for each alignment head (package manifest ``alignment_heads``, in that
order), the scaled query-key products of its cross-attention:

    ``alignment`` f32 [n_alignment_heads, batch, n_tokens, audio_ctx]

Scores, not probabilities: openai-whisper (and CTranslate2) take the softmax over the
window's real frames only, which the caller knows and the graph need not (engines/word_timing.py).
Layers above the highest alignment head's layer are never computed, and the graph takes
only the cross-attention K/V inputs it reads (``cross_k.l`` up to that layer, ``cross_v.l``
below it), by the same names as the decoder's.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgescribe.engines.onnx_export import AUDIO_CTX, EMBEDDING, MASK_VALUE, _fused_qkv, _GraphBuilder, _model
from edgescribe.engines.runtime import cross_layer_shape, layer_input
from edgescribe.engines.weights import WhisperWeights

ALIGNMENT = "alignment"


def aligner_inputs(alignment_heads: list[tuple[int, int]]) -> list[str]:
    """The cross-attention K/V inputs the aligner reads, in graph order."""
    top = max(layer for layer, _ in alignment_heads)
    return [layer_input("cross_k", i) for i in range(top + 1)] + [layer_input("cross_v", i) for i in range(top)]


def build_aligner(weights: WhisperWeights, alignment_heads: list[tuple[int, int]]) -> onnx.ModelProto:
    dims = weights.dims
    if not alignment_heads:
        raise ValueError("the aligner needs at least one alignment head")
    for layer, head in alignment_heads:
        if not (0 <= layer < dims.n_text_layer and 0 <= head < dims.n_text_head):
            raise ValueError(f"alignment head ({layer}, {head}) is outside the decoder's "
                             f"{dims.n_text_layer} layers x {dims.n_text_head} heads")
    g = _GraphBuilder()
    d, n_head = dims.n_text_state, dims.n_text_head
    d_head = d // n_head
    top = max(layer for layer, _ in alignment_heads)

    n_tokens = g.op("Squeeze", [g.op("Shape", ["tokens"], start=1, end=2), g.const([0])])
    positions = g.op("Range", [g.const(0), n_tokens, g.const(1)])  # [N]
    # The token embedding is most of the graph (80 MB of tiny's float32 weights); stored float16 it
    # halves the file, and the scores move by far less than the 20 ms a DTW step stands for.
    embedding = g.weight(f"{EMBEDDING}.float16", weights[EMBEDDING].astype(np.float16))
    pos_embedding = g.weight("decoder.positional_embedding", weights["decoder.positional_embedding"])
    tokens = g.op("Cast", [g.op("Gather", [embedding, "tokens"])], to=TensorProto.FLOAT)
    x = g.op("Add", [tokens, g.op("Gather", [pos_embedding, positions])])

    # Causal mask [N, N]: query i sees keys j <= i.
    visible = g.op("LessOrEqual", [g.op("Unsqueeze", [positions, g.const([0])]),
                                   g.op("Unsqueeze", [positions, g.const([1])])])
    mask = g.op("Where", [visible, g.const(0.0, np.float32), g.const(MASK_VALUE, np.float32)])

    scores_per_layer = []
    for i in range(top + 1):
        prefix = f"decoder.blocks.{i}"
        h = g.layer_norm(x, weights, f"{prefix}.attn_ln")
        qkv_w, qkv_b = _fused_qkv(weights, f"{prefix}.attn", d_head)
        q, k, v = g.op("Split", [g.linear(h, qkv_w, qkv_b, f"{prefix}.attn.qkv"), g.const([d, d, d])],
                       outputs=3, axis=-1)
        attended = g.attend(g.heads(q, n_head, d_head, [0, 2, 1, 3]), g.heads(k, n_head, d_head, [0, 2, 3, 1]),
                            g.heads(v, n_head, d_head, [0, 2, 1, 3]), mask)
        out = g.linear(g.merge_heads(attended, d), weights[f"{prefix}.attn.out.weight"],
                       weights[f"{prefix}.attn.out.bias"], f"{prefix}.attn.out")
        x = g.op("Add", [x, out])

        h = g.layer_norm(x, weights, f"{prefix}.cross_attn_ln")
        scale = np.float32(d_head ** -0.25)  # cross_k carries the other d_head**-0.25
        q = g.linear(h, weights[f"{prefix}.cross_attn.query.weight"] * scale,
                     weights[f"{prefix}.cross_attn.query.bias"] * scale, f"{prefix}.cross_attn.query")
        q = g.heads(q, n_head, d_head, [0, 2, 1, 3])  # [B, H, N, dh]
        k_t = g.op("Transpose", [layer_input("cross_k", i)], perm=[0, 1, 3, 2])  # [B, H, dh, T]
        scores = g.op("MatMul", [q, k_t])  # [B, H, N, T]
        wanted = [head for layer, head in alignment_heads if layer == i]
        if wanted:
            scores_per_layer.append(g.op("Gather", [scores, g.const(wanted)], axis=1))
        if i == top:
            break
        attended = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), layer_input("cross_v", i)])
        out = g.linear(g.merge_heads(attended, d), weights[f"{prefix}.cross_attn.out.weight"],
                       weights[f"{prefix}.cross_attn.out.bias"], f"{prefix}.cross_attn.out")
        x = g.mlp(g.op("Add", [x, out]), weights, prefix)

    # Heads in the manifest's order, which need not be sorted by layer.
    by_layer = [(layer, head) for i in range(top + 1) for layer, head in alignment_heads if layer == i]
    order = [by_layer.index(pair) for pair in alignment_heads]
    stacked = scores_per_layer[0] if len(scores_per_layer) == 1 else g.op("Concat", scores_per_layer, axis=1)
    if order != list(range(len(order))):
        stacked = g.op("Gather", [stacked, g.const(order)], axis=1)
    g.op("Transpose", [stacked], outputs=[ALIGNMENT], perm=[1, 0, 2, 3])

    kv_shape = list(cross_layer_shape(dims, "batch", AUDIO_CTX))
    graph = helper.make_graph(
        g.nodes, "whisper_aligner",
        inputs=[helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "n_tokens"]),
                *(helper.make_tensor_value_info(name, TensorProto.FLOAT, kv_shape) for name in aligner_inputs(alignment_heads))],
        outputs=[helper.make_tensor_value_info(ALIGNMENT, TensorProto.FLOAT,
                                               [len(alignment_heads), "batch", "n_tokens", AUDIO_CTX])],
        initializer=g.initializers,
    )
    return _model(graph)
