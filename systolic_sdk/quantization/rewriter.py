"""The rewrite walk: one pass over the graph in topological order.

For each node the backend's rule for its op type is asked to rewrite it in the
config's output form. A rule requests quantized inputs from the context (which
inserts a QuantizeLinear, or a DynamicQuantizeLinear in dynamic mode, only when the
edge is still float) and declares its outputs quantized. A node that no rule
rewrites stays float; every quantized-only input it reads gets one DequantizeLinear,
which restores the original tensor name. Quantized graph outputs get the same.
"""

from __future__ import annotations

import onnx
from onnx import helper

from systolic_sdk.graph.util import subgraph_inputs
from systolic_sdk.quantization.context import MS_DOMAIN, RewriteContext
from systolic_sdk.quantization.rules.base import OpRule
from systolic_sdk.quantization.warn import warn

DEFAULT_DOMAINS = ("", "ai.onnx")


def eligible_rule(ctx: RewriteContext, node: onnx.NodeProto) -> OpRule | None:
    """The backend rule for ``node`` if the config lets it be quantized, else None."""
    if node.domain not in DEFAULT_DOMAINS:
        return None
    rule = ctx.backend.rules.get(node.op_type)
    if rule is None or not rule.supports(node, ctx.form):
        return None
    cfg = ctx.config
    if cfg.op_types_to_quantize is not None and node.op_type not in cfg.op_types_to_quantize:
        return None
    if cfg.nodes_to_quantize is not None and node.name not in cfg.nodes_to_quantize:
        return None
    if node.name in cfg.nodes_to_exclude:
        return None
    return rule


def walk(ctx: RewriteContext) -> onnx.ModelProto:
    """Rewrite every node of ``ctx.model`` and return the new model."""
    nodes = list(ctx.graph.node)
    rules = [eligible_rule(ctx, n) for n in nodes]
    if ctx.static:  # reverse order so that narrowing propagates up chains (Relu -> Relu)
        for node, rule in reversed(list(zip(nodes, rules, strict=True))):
            if rule is not None:
                ctx.current = node
                rule.adjust_ranges(node, ctx)
    for node, rule in zip(nodes, rules, strict=True):
        ctx.current = node
        done = rule is not None and rule.apply(node, ctx)
        if not done:
            ctx.emit_float(node)
            continue
        for out in node.output:
            if out:
                ctx.honour_override(out)
    ctx.current = None
    if ctx.enlarged_biases:
        names = ", ".join(f"'{n}'" for n in ctx.enlarged_biases[:5])
        more = f" and {len(ctx.enlarged_biases) - 5} more" if len(ctx.enlarged_biases) > 5 else ""
        warn(
            f"{len(ctx.enlarged_biases)} bias(es) would overflow int32 with the computed "
            f"scales ({names}{more}); their weight scales were enlarged so that they fit"
        )
    for out in ctx.graph.output:
        state = ctx.edge(out.name)
        if state is not None and not state.float_available:
            ctx.dequantized(state)
    return _assemble(ctx)


def _assemble(ctx: RewriteContext) -> onnx.ModelProto:
    """Build the output model: new nodes, used initializers, clean value_info."""
    model = onnx.ModelProto()
    model.CopyFrom(ctx.model)
    graph = model.graph
    nodes = _drop_dead_inserted(ctx.nodes, ctx.inserted, ctx.graph_outputs)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input} | ctx.graph_outputs
    for n in nodes:
        used |= subgraph_inputs(n)
    inits = [t for t in list(ctx.graph.initializer) + ctx.new_initializers if t.name in used]
    dropped = {t.name for t in ctx.graph.initializer} - {t.name for t in inits}
    del graph.initializer[:]
    graph.initializer.extend(inits)
    if dropped & {i.name for i in graph.input}:
        keep_inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(keep_inputs)
    produced = {o for n in nodes for o in n.output}
    keep_vi = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    if ctx.uses_ms_domain and not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _drop_dead_inserted(
    nodes: list[onnx.NodeProto], inserted: set[str], outputs: set[str]
) -> list[onnx.NodeProto]:
    """Remove inserted nodes whose outputs nobody reads (repeat until stable)."""
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        for n in nodes:
            read |= subgraph_inputs(n)
        keep = [n for n in nodes if n.name not in inserted or any(o in read for o in n.output)]
        if len(keep) == len(nodes):
            return keep
        nodes = keep
