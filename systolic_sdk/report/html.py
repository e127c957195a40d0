"""The report as one self-contained HTML page: inline CSS and JS, the data as JSON.

Tables are written here (readable without scripts); the charts are drawn in the
browser by the inline renderer of :mod:`systolic_sdk.report.assets` from the
embedded JSON. Nothing is fetched: no external file, font or script.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from systolic_sdk.report.assets import CSS, JS


def to_json(report: Mapping[str, Any], *, indent: int | None = None) -> str:
    """The report as strict JSON (infinities are already the strings "inf"/"-inf")."""
    return json.dumps(report, indent=indent, allow_nan=False, sort_keys=False)


def _embed(report: Mapping[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element (no ``<``, ``>`` or ``&`` characters)."""
    text = to_json(report)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(v: Any) -> float:
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return math.nan if v is None else float(v)


def _db(v: Any) -> str:
    x = _num(v)
    if math.isnan(x):
        return "-"
    return "exact" if math.isinf(x) and x > 0 else f"{x:.2f} dB"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f} %"


def _int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _count(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f}"


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """Cells are pre-escaped HTML strings."""
    num = set(numeric)
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i in num else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="n"' if i in num else (' class="name"' if i == 1 else "")
            cells.append(f"<td{cls}>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _card(key: str, value: str, cls: str = "") -> str:
    c = f' class="v {cls}"' if cls else ' class="v"'
    return f'<div class="card"><div class="k">{escape(key)}</div><div{c}>{value}</div></div>'


def _exact_text(ex: Mapping[str, Any]) -> tuple[str, str]:
    if ex.get("status") != "ok":
        return "unavailable", "warn"
    if ex.get("bit_exact"):
        return "yes", "ok"
    return ("no (documented rules)", "warn") if ex.get("explained") else ("no", "bad")


def _summary(r: Mapping[str, Any]) -> str:
    meta, totals, ex = r["meta"], r["totals"], r["exactness"]
    text, cls = _exact_text(ex)
    cards = [_card("bit-exact vs onnxruntime", escape(text), cls)]
    for o in r["outputs"]:
        name = escape(o["name"])
        if o.get("top1_agreement") is not None:
            cards.append(_card(f"top-1 agreement ({name})", _pct(o["top1_agreement"])))
        cards.append(_card(f"SQNR vs fp32 ({name})", escape(_db(o["sqnr_db"]))))
    cards.append(_card("array cycles / inference", escape(_count(totals["est_cycles"]))))
    cards.append(_card("array utilization", _pct(totals["utilization"])))
    cards.append(_card("samples", _int(meta["samples"])))
    return f'<section id="summary"><div class="cards">{"".join(cards)}</div></section>'


def _meta(r: Mapping[str, Any]) -> str:
    m = r["meta"]
    weights = ", ".join(f"{k}: {_db(v)}" for k, v in m.get("weight_sqnr_db", {}).items())
    rows = [
        ("quantized model", m["model"]),
        ("model sha256", m["model_sha256"]),
        ("fp32 model", m["fp32_model"]),
        ("fp32 sha256", m["fp32_sha256"]),
        ("fp32 reference", f"{m['fp32_reference']} (weight SQNR {weights})"),
        ("data", m["data"]),
        ("samples", f"{m['samples']} in {m['batches']} batch(es) of up to {m['batch_size']}"),
        ("target", m["target"]),
        ("array", f"DIM {m['dim']}; cycles for a batch of {m['cycles_batch']}"),
        ("SDK version", m["sdk_version"]),
        ("onnxruntime", m["onnxruntime_version"]),
        ("date (UTC)", m["date"]),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<section id="meta"><h2>Run</h2><table>{body}</table></section>'


def _sqnr_section(r: Mapping[str, Any]) -> str:
    rows = [
        (
            str(layer["index"]),
            escape(layer["name"]),
            escape(layer["op"]),
            escape(layer["tensor"]),
            escape(layer["fp32_tensor"] or "-"),
            escape(_db(layer["sqnr_db"])),
            escape(layer["note"] or ""),
        )
        for layer in r["layers"]
    ]
    table = _table(
        ("#", "layer", "op", "int8 tensor", "fp32 tensor", "SQNR", "note"), rows, numeric=(0, 5)
    )
    return (
        '<section id="sqnr"><h2>Per-layer SQNR</h2><p class="help">SQNR of each layer\'s '
        "dequantized output against the matching fp32 tensor (fused ReLU applied to the fp32 "
        "values), over all samples: 10 log10(sum fp32^2 / sum (fp32 - dequantized)^2). The "
        "x axis is the node index in execution order.</p>"
        '<div class="legend"><span style="background:var(--conv)"></span>conv / matmul'
        '<span style="background:var(--add)"></span>add<span style="background:var(--other)">'
        "</span>other</div>"
        f'<div class="chart" data-chart="sqnr"></div>{table}</section>'
    )


def _acc_section(r: Mapping[str, Any]) -> str:
    rows = []
    for layer in r["layers"]:
        a = layer.get("accumulator")
        if not a:
            continue
        flags = ", ".join(a["observed_flags"]) or "-"
        bflags = ", ".join(a["bound_flags"]) or "-"
        rows.append(
            (
                str(layer["index"]),
                escape(layer["name"]),
                _int(a["min"]),
                _int(a["max"]),
                _int(a["bound_observed_input"]),
                _int(a["bound"]),
                escape(flags),
                escape(bflags),
            )
        )
    table = _table(
        (
            "#",
            "layer",
            "observed min",
            "observed max",
            "bound (observed |x|)",
            "bound (int8 |x|)",
            "observed flags",
            "bound flags",
        ),
        rows,
        numeric=(0, 2, 3, 4, 5),
    )
    return (
        '<section id="acc"><h2>Accumulator ranges</h2><p class="help">Exact accumulators '
        "(bias included, before the int32 wrap) recomputed from each layer's int8 inputs, "
        "and the worst case |bias| + max|x| * sum|w| per output channel "
        "(runtime_emulator.array), with max|x| from the int8 range or from the observed "
        "inputs. Above 2^24 the int32 to float32 conversion drops low bits; above 2^31 the "
        'accumulator wraps.</p><div class="chart" data-chart="acc"></div>'
        f"{table}</section>"
    )


def _cycles_section(r: Mapping[str, Any]) -> str:
    rows = []
    for layer in r["layers"]:
        a = layer.get("array")
        if not a:
            continue
        j = str(a["J"]) if a["groups"] == 1 else f"{a['J']} x {a['groups']}g"
        rows.append(
            (
                str(layer["index"]),
                escape(layer["name"]),
                str(a["I"]),
                escape(j),
                str(a["K"]),
                _int(a["tiles"]),
                escape(_count(a["ideal_cycles"])),
                escape(_count(a["est_cycles"])),
                _pct(a["utilization"]),
            )
        )
    t = r["totals"]
    rows.append(
        (
            "",
            f"<b>total ({t['array_layers']} layers)</b>",
            "",
            "",
            "",
            _int(t["tiles"]),
            escape(_count(t["ideal_cycles"])),
            escape(_count(t["est_cycles"])),
            _pct(t["utilization"]),
        )
    )
    table = _table(
        ("#", "layer", "I", "J", "K", "tiles", "ideal cycles", "est. cycles", "utilization"),
        rows,
        numeric=(0, 2, 3, 4, 5, 6, 7, 8),
    )
    return (
        '<section id="cycles"><h2>Array cycles and utilization</h2><p class="help">Each '
        "layer as an I x K by K x J matmul per group on the DIM x DIM weight-stationary array "
        "(runtime_emulator.array): tiles = groups * ceil(I/DIM) * ceil(J/DIM) * ceil(K/DIM), "
        "estimated cycles = tiles * DIM, ideal = groups * I*J*K / DIM^2. Data movement is not "
        "modelled: the estimate is a lower bound on time.</p>"
        f'<div class="chart" data-chart="cycles"></div>{table}</section>'
    )


def _hist_section(r: Mapping[str, Any]) -> str:
    figs = []
    for i, a in enumerate(r["activations"]):
        frac = a["clipped_fraction"]
        cls = "bad" if frac > 1e-3 else ("warn" if frac > 0 else "")
        n = a["clipped_below"] + a["clipped_above"]
        clipped = f"{100 * frac:.3g} % ({n:,} values)" if n else "0 %"
        figs.append(
            "<figure><figcaption>"
            f'{escape(a["tensor"])}<br><b class="{cls}">clipped {clipped}</b> '
            f"<b>scale {a['scale']:.4g}, zp {a['zero_point']}</b></figcaption>"
            f'<div class="chart" data-chart="hist" data-index="{i}"></div></figure>'
        )
    return (
        '<section id="hist"><h2>Activation histograms</h2><p class="help">fp32 values of '
        "each quantized activation (log count), the clip range scale * (qmin - zp) .. "
        "scale * (qmax - zp) in red, and the fraction of values that quantization saturates."
        f'</p><div class="hist-grid">{"".join(figs)}</div></section>'
    )


def _divergence(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "-"
    return escape(
        f"node '{d['node']}' ({d['op_type']}) tensor '{d['tensor']}' batch {d['batch']} "
        f"index {tuple(d['index'])}: emulator {d['emulator']}, reference {d['reference']}"
        f" - cause: {d['cause']}"
    )


def _exact_section(r: Mapping[str, Any]) -> str:
    ex = r["exactness"]
    if ex.get("status") != "ok":
        body = f'<p class="warn">Not checked: {escape(ex.get("reason", ""))}</p>'
        return f'<section id="exact"><h2>Bit-exactness</h2>{body}</section>'
    text, cls = _exact_text(ex)
    rows = []
    for o in r["outputs"]:
        ok = o.get("bit_exact")
        mark = (
            "-"
            if ok is None
            else ('<span class="ok">yes</span>' if ok else '<span class="bad">no</span>')
        )
        rows.append(
            (
                escape(o["name"]),
                mark,
                _int(o.get("n_diff")),
                _pct(o.get("top1_agreement")),
                escape(_db(o["sqnr_db"])),
                _divergence(o.get("first_divergence")),
            )
        )
    table = _table(
        (
            "output",
            "bit-exact",
            "elements differing",
            "top-1 vs fp32",
            "SQNR vs fp32",
            "first divergence",
        ),
        rows,
        numeric=(2, 3, 4),
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in ex.get("notes", []))
    return (
        '<section id="exact"><h2>Bit-exactness</h2>'
        f'<p>Emulator against {escape(ex["reference"])}: <b class="{cls}">{escape(text)}</b>; '
        f"{ex['tensors_exact']} of {ex['tensors_compared']} traced tensors bit-exact. "
        f"First divergence: {_divergence(ex.get('first_divergence'))}</p>"
        f"{table}{'<ul>' + notes + '</ul>' if notes else ''}</section>"
    )


def _unmapped_section(r: Mapping[str, Any]) -> str:
    if not r["unmapped"]:
        return ""
    items = "".join(
        f"<li><code>{escape(u['tensor'])}</code> ({escape(u['node'])}): {escape(u['note'])}</li>"
        for u in r["unmapped"]
    )
    return (
        '<section id="unmapped"><h2>Not compared</h2><p class="help">Quantized tensors '
        f"without a usable fp32 counterpart.</p><ul>{items}</ul></section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for a report dict of :func:`systolic_sdk.report.build_report`."""
    meta = report["meta"]
    title = f"Quantization report: {meta['model']}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>Quantization report</h1><p>{escape(str(meta['model']))} - target "
        f"{escape(meta['target'])}, DIM {meta['dim']}, {meta['samples']} samples, "
        f"{escape(meta['date'])}</p></header><main>",
        _summary(report),
        _exact_section(report),
        _sqnr_section(report),
        _acc_section(report),
        _cycles_section(report),
        _hist_section(report),
        _unmapped_section(report),
        _meta(report),
        "</main>",
        f'<script type="application/json" id="report-data">{_embed(report)}</script>',
        f"<script>{JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
