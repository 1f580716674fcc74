"""An evaluation report three ways: a table for the terminal, JSON, and a self-contained HTML page.

The HTML page draws its plots (confusion matrix, reliability diagram, coverage against accuracy)
as inline SVG written here, so it needs no plotting library and opens anywhere, offline.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from faceapp.eval.evaluation import AttributeResult, Report, SetResult

LIST_AT_MOST = 20  # names shown per list in the table (the JSON and HTML name them all)
TABLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
COMPARED = ("accuracy", "balanced_accuracy", "ece")


# -- JSON --------------------------------------------------------------------------------------
def to_json(report: Report) -> dict:
    """The figures as ``--json`` writes them (+ ``against``/``difference`` with --against)."""
    doc = {
        "attributes": {name: r.to_json() for name, r in report.result.attributes.items()},
        "images": report.images,
        "no_face": len(report.no_face),
        "skipped": report.skipped,
        "images_per_s": round(report.images_per_s, 3),
        "model": report.model,
    }
    if report.against is not None:
        doc["against"] = {
            "source": report.against.source,
            "attributes_version": report.against.digest,
            "attributes": {name: r.to_json() for name, r in report.against.attributes.items()},
            "not_compared": report.not_compared,
        }
        doc["difference"] = difference(report.result, report.against)
    return doc


def difference(base: SetResult, other: SetResult) -> dict[str, dict[str, float]]:
    """Per attribute both scored: the --against set's figure minus the main set's."""
    return {
        name: {key: getattr(theirs, key) - getattr(base.attributes[name], key) for key in COMPARED}
        for name, theirs in other.attributes.items()
        if name in base.attributes
    }


# -- the terminal table ------------------------------------------------------------------------
def format_table(report: Report) -> str:
    """A readable summary: one block per attribute, then what was not scored."""
    lines = [
        f"faceapp eval of {report.data}",
        f"model {_model_line(report.model)}",
        f"images {report.images}, no face {len(report.no_face)}, skipped {len(report.skipped)}, "
        f"{report.images_per_s:.1f} images/s",
        "",
    ]
    if not report.result.attributes:
        lines.append("No attribute had a scored image.")
    header = f"{'attribute':<16}{'n':>6}{'accuracy':>10}{'balanced':>10}{'ECE':>8}{'T':>7}"
    if report.result.attributes:
        lines.append(header)
    for name, result in report.result.attributes.items():
        lines.append(
            f"{name:<16}{result.n:>6}{result.accuracy:>10.3f}{result.balanced_accuracy:>10.3f}"
            f"{result.ece:>8.3f}{result.temperature:>7.2f}"
        )
    for name, result in report.result.attributes.items():
        lines += ["", f"{name}", *_attribute_lines(result)]
    if report.against is not None:
        lines += ["", f"compared with {report.against.source} (theirs minus these)"]
        lines.append(f"{'attribute':<16}{'accuracy':>10}{'balanced':>10}{'ECE':>8}")
        for name, delta in difference(report.result, report.against).items():
            lines.append(
                f"{name:<16}{delta['accuracy']:>+10.3f}{delta['balanced_accuracy']:>+10.3f}"
                f"{delta['ece']:>+8.3f}"
            )
        for name, reason in report.not_compared.items():
            lines.append(f"{name:<16}not compared: {reason}")
    if report.no_face:
        lines += ["", f"no face found ({len(report.no_face)}):", *_names(report.no_face)]
    if report.skipped:
        skipped = [f"{item['path']}: {item['reason']}" for item in report.skipped]
        lines += ["", f"skipped ({len(report.skipped)}):", *_names(skipped)]
    return "\n".join(lines)


def _attribute_lines(result: AttributeResult) -> list[str]:
    recall = ", ".join(
        f"{label} {'-' if value is None else f'{value:.3f}'}"
        for label, value in result.recall.items()
    )
    first = max(len(label) for label in result.labels)
    widths = [max(5, len(label)) + 2 for label in result.labels]
    lines = [f"  recall: {recall}", "  confusion (rows: true label, columns: answer):"]
    header = "".join(f"{label:>{w}}" for label, w in zip(result.labels, widths, strict=True))
    lines.append(f"    {'':<{first}}{header}")
    for label, row in zip(result.labels, result.confusion, strict=True):
        counts = "".join(f"{count:>{w}}" for count, w in zip(row, widths, strict=True))
        lines.append(f"    {label:<{first}}{counts}")
    points = [p for p in result.coverage if p["abstain_below"] in TABLE_THRESHOLDS]
    lines.append(
        "  withheld below margin: "
        + ", ".join(
            f"{p['abstain_below']:.1f} -> {p['coverage']:.0%} answered"
            + (f" at {p['accuracy']:.3f}" if p["accuracy"] is not None else "")
            for p in points
        )
    )
    return lines


def _names(items: Sequence[str]) -> list[str]:
    shown = [f"  {item}" for item in items[:LIST_AT_MOST]]
    if len(items) > LIST_AT_MOST:
        shown.append(f"  ... and {len(items) - LIST_AT_MOST} more (all are in --json)")
    return shown


def _model_line(model: dict) -> str:
    random = ", RANDOM WEIGHTS" if model.get("random_weights") else ""
    return (
        f"{model.get('name')} (weights {model.get('version')}{random}), "
        f"attributes {model.get('attributes_version')}"
    )


# -- HTML --------------------------------------------------------------------------------------
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:62rem;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.2rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}tr:nth-child(even){background:#f4f4f4}
.plots{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-end}
figure{margin:0;max-width:18rem}figcaption{color:#555}
.warn{background:#fff3cd;padding:.5rem 1rem}code{background:#f4f4f4}
"""


def to_html(report: Report) -> str:
    """A self-contained page: summary, then per attribute its figures and plots."""
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>faceapp eval: {e(report.data)}</title><style>{STYLE}</style></head><body>",
        f"<h1>faceapp eval of <code>{e(report.data)}</code></h1>",
        f"<p>Model {e(_model_line(report.model))}.<br>{report.images} images, "
        f"{len(report.no_face)} with no face, {len(report.skipped)} skipped; "
        f"{report.images_per_s:.1f} images/s.</p>",
    ]
    if report.model.get("random_weights"):
        parts.append(
            "<p class='warn'>These weights are random: the figures test the harness, "
            "not faceapp's quality.</p>"
        )
    parts.append(_summary_table(report))
    for name, result in report.result.attributes.items():
        parts.append(f"<h2 id='{e(name)}'>{e(name)}</h2>")
        recall = "".join(
            f"<tr><td>{e(label)}</td><td>{'-' if v is None else f'{v:.3f}'}</td></tr>"
            for label, v in result.recall.items()
        )
        parts.append(
            f"<p>n {result.n}, accuracy {result.accuracy:.3f}, balanced accuracy "
            f"{result.balanced_accuracy:.3f}, ECE {result.ece:.3f}, temperature "
            f"{result.temperature:.3g}.</p><table><tr><th>label</th><th>recall</th></tr>"
            f"{recall}</table><div class='plots'>"
            f"<figure>{confusion_svg(result)}<figcaption>Confusion matrix (rows: true label; "
            "shade: share of the row)</figcaption></figure>"
            f"<figure>{reliability_svg(result)}<figcaption>Reliability: accuracy per "
            "confidence bin; red: its mean confidence (the diagonal is perfect calibration)"
            "</figcaption></figure>"
            f"<figure>{coverage_svg(result)}<figcaption>Accuracy of the answers kept when "
            "low-margin answers are withheld, against the share kept</figcaption></figure>"
            "</div>"
        )
    for title, items in (
        ("No face found", report.no_face),
        ("Skipped", [f"{i['path']}: {i['reason']}" for i in report.skipped]),
    ):
        if items:
            rows = "".join(f"<li>{e(item)}</li>" for item in items)
            parts.append(f"<h2>{title} ({len(items)})</h2><ul>{rows}</ul>")
    parts.append("</body></html>")
    return "".join(parts)


def _summary_table(report: Report) -> str:
    e = html.escape
    diff = difference(report.result, report.against) if report.against else {}
    head = "<tr><th>attribute</th><th>n</th><th>accuracy</th><th>balanced</th><th>ECE</th>"
    if diff:
        head += "<th>Δ accuracy</th><th>Δ balanced</th><th>Δ ECE</th>"
    rows = []
    for name, r in report.result.attributes.items():
        row = (
            f"<tr><td><a href='#{e(name)}'>{e(name)}</a></td><td>{r.n}</td>"
            f"<td>{r.accuracy:.3f}</td><td>{r.balanced_accuracy:.3f}</td><td>{r.ece:.3f}</td>"
        )
        if diff:
            d = diff.get(name)
            row += "".join(f"<td>{d[k]:+.3f}</td>" if d else "<td>-</td>" for k in COMPARED)
        rows.append(row + "</tr>")
    caption = ""
    if report.against is not None:
        caption = f"<p>Δ: <code>{e(report.against.source)}</code> minus these prompts.</p>"
    return f"{caption}<table>{head}</tr>{''.join(rows)}</table>"


# -- SVG plots ---------------------------------------------------------------------------------
def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='{html.escape(label)}' "
        f"font-family='sans-serif' font-size='11'>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = "".join(f" {k.replace('_', '-')}='{v}'" for k, v in attrs.items())
    return f"<text x='{x:.1f}' y='{y:.1f}'{extra}>{html.escape(text)}</text>"


def confusion_svg(result: AttributeResult, cell: int = 34) -> str:
    """The confusion matrix as a grid of counts, each shaded by its share of the true row."""
    k = len(result.labels)
    longest = max(len(label) for label in result.labels)
    pad = 12 + 6 * longest  # room for the row labels, and the column labels turned 45 degrees
    width, height = pad + k * cell + 5 * longest, pad + k * cell + 4
    body = []
    for i, row in enumerate(result.confusion):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            x, y = pad + j * cell, pad + i * cell
            fill = f"rgb({int(255 - 200 * share)},{int(255 - 120 * share)},255)"
            body.append(
                f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' fill='{fill}' "
                "stroke='#999'/>"
            )
            colour = "#fff" if share > 0.6 else "#000"
            body.append(
                _text(x + cell / 2, y + cell / 2 + 4, str(count), text_anchor="middle", fill=colour)
            )
    for i, label in enumerate(result.labels):
        body.append(_text(pad - 4, pad + i * cell + cell / 2 + 4, label, text_anchor="end"))
        x, y = pad + i * cell + cell / 2, pad - 4
        body.append(_text(x, y, label, transform=f"rotate(-45 {x:.1f} {y:.1f})"))
    return _svg(width, height, body, "confusion matrix")


def reliability_svg(result: AttributeResult, size: int = 220) -> str:
    """Accuracy per confidence bin as bars, the diagonal, and each bin's count."""
    m, inner = 30, size - 48
    body = [_axes(m, inner, "confidence", "accuracy")]
    body.append(
        f"<line x1='{m}' y1='{m + inner}' x2='{m + inner}' y2='{m}' stroke='#999' "
        "stroke-dasharray='4 3'/>"
    )
    for entry in result.reliability:
        if not entry["count"]:
            continue
        x = m + entry["low"] * inner
        w = (entry["high"] - entry["low"]) * inner
        h = entry["accuracy"] * inner
        body.append(
            f"<rect x='{x:.1f}' y='{m + inner - h:.1f}' width='{w - 1:.1f}' height='{h:.1f}' "
            "fill='#4a7bd0' fill-opacity='.8'/>"
        )
        gap_y = m + inner - entry["confidence"] * inner
        body.append(
            f"<line x1='{x:.1f}' y1='{gap_y:.1f}' x2='{x + w - 1:.1f}' y2='{gap_y:.1f}' "
            "stroke='#d04a4a' stroke-width='2'/>"
        )
        body.append(_text(x + w / 2, m + inner - h - 3, str(entry["count"]), text_anchor="middle"))
    return _svg(size, size, body, "reliability diagram")


def coverage_svg(result: AttributeResult, size: int = 220) -> str:
    """Accuracy of the answered against the share answered, one point per threshold."""
    m, inner = 30, size - 48
    body = [_axes(m, inner, "answered", "accuracy")]
    points = [
        (m + p["coverage"] * inner, m + inner - p["accuracy"] * inner)
        for p in result.coverage
        if p["accuracy"] is not None
    ]
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f"<polyline points='{path}' fill='none' stroke='#4a7bd0' stroke-width='2'/>")
        body += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='#4a7bd0'/>" for x, y in points]
    return _svg(size, size, body, "coverage against accuracy")


def _axes(m: int, inner: int, x_label: str, y_label: str) -> str:
    bottom = m + inner
    ticks = "".join(
        _text(m + t * inner, bottom + 12, f"{t:g}", text_anchor="middle")
        + _text(m - 4, bottom - t * inner + 4, f"{t:g}", text_anchor="end")
        for t in (0, 0.5, 1)
    )
    return (
        f"<rect x='{m}' y='{m}' width='{inner}' height='{inner}' fill='none' stroke='#555'/>"
        + ticks
        + _text(m + inner / 2, m - 8, f"{y_label} vs {x_label}", text_anchor="middle")
    )
