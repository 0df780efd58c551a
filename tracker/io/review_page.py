"""``review.html``: one static page to look through a run's results.

It needs no server and nothing from the network (no CDN, no fonts): the CSS and the
script are inline and the pictures are the run's own files, linked by relative paths, so
it opens from disk on an offline rig PC (``file://``). One card per query, worst first by
its lowest label quality (natural order of names when quality was not computed), each
with the query's overlay, a legend of its labels (colour as in the overlay, value, name,
area in pixels, quality) and links to its label PNG and overlay. A checkbox (or ``f``)
shows only the flagged queries (lowest quality below the threshold); ``j``/``k`` or the
arrow keys move between cards and ``o`` opens the current card's label PNG.

The cards are written as HTML, so the page can be read with scripts off too; the script
only filters and navigates.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sst.tracker.io.files import atomic_write
from sst.tracker.io.queries import natural_key
from sst.tracker.io.visualise import label_palette

__all__ = ["Card", "LabelLine", "review_cards", "render_review_page", "write_review_page"]


@dataclass
class LabelLine:
    """One label of one query: value, name, area in pixels, quality (None: not computed)."""

    label: int
    name: str
    area: int
    quality: float | None


@dataclass
class Card:
    """One query of the page: file name, its labels, the lowest label quality and the
    label it belongs to (None without quality), and whether it is flagged."""

    query: str
    labels: list[LabelLine] = field(default_factory=list)
    quality_min: float | None = None
    worst: LabelLine | None = None
    flagged: bool = False


def review_cards(rows: Iterable[Mapping[str, Any]], names: Mapping[int, str],
                 flag_below: float) -> list[Card]:
    """Cards from ``results`` rows (``query``, ``label``, ``area``, ``quality`` per query and
    label, as ``results.json`` has them), in page order: worst first by lowest label
    quality, ties and runs without quality in natural order of the query names."""
    by_query: dict[str, Card] = {}
    for r in rows:
        lab = int(r["label"])
        q = r.get("quality")
        card = by_query.setdefault(str(r["query"]), Card(str(r["query"])))
        card.labels.append(LabelLine(lab, names.get(lab) or str(r.get("name") or lab),
                                     int(r["area"]), None if q is None else float(q)))
    for card in by_query.values():
        card.labels.sort(key=lambda line: line.label)
        scored = [line for line in card.labels if line.quality is not None]
        if scored:
            card.worst = min(scored, key=lambda line: (line.quality, line.label))
            card.quality_min = card.worst.quality
            card.flagged = card.quality_min is not None and card.quality_min < flag_below
    return sorted(by_query.values(), key=lambda c: (
        c.quality_min if c.quality_min is not None else float("inf"), natural_key(c.query)))


_CSS = """
:root { color-scheme: light dark; --bg: #f6f5f2; --fg: #1d1d1d; --card: #fff; --line: #d8d6d0;
  --muted: #666; --flag: #b3261e; --sel: #1a73e8; }
@media (prefers-color-scheme: dark) { :root { --bg: #161616; --fg: #e8e8e8; --card: #222;
  --line: #3a3a3a; --muted: #aaa; --flag: #ff8a80; --sel: #8ab4f8; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { position: sticky; top: 0; z-index: 1; background: var(--bg); padding: 10px 16px;
  border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 4px; }
.summary, .keys, .shown { color: var(--muted); }
.controls { display: flex; gap: 18px; flex-wrap: wrap; align-items: center; margin-top: 6px; }
.warning { margin: 6px 0; padding: 6px 10px; border: 2px solid var(--flag); color: var(--flag);
  font-weight: 600; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px;
  padding: 14px 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px; scroll-margin-top: 110px; }
.card.flagged { border-left: 5px solid var(--flag); }
.card.current { outline: 3px solid var(--sel); }
.card h2 { font-size: 14px; margin: 0 0 6px; display: flex; gap: 8px; align-items: baseline;
  flex-wrap: wrap; }
.rank { color: var(--muted); }
.badge { color: #fff; background: var(--flag); border-radius: 3px; padding: 0 5px;
  font-size: 12px; }
.qmin { margin-left: auto; color: var(--muted); }
.card img { display: block; width: 100%; height: 300px; object-fit: contain; background: #000; }
table { border-collapse: collapse; width: 100%; margin-top: 6px; font-size: 13px; }
th, td { text-align: left; padding: 1px 6px 1px 0; }
th { color: var(--muted); font-weight: normal; border-bottom: 1px solid var(--line); }
td.num, th.num { text-align: right; }
tr.low td.quality { color: var(--flag); font-weight: 600; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: middle; border: 1px solid rgba(0,0,0,.3); }
.links { margin: 6px 0 0; }
.failed { padding: 0 16px 16px; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var box = document.getElementById("flagged-only");
  var shown = document.getElementById("shown");
  var current = null;
  function visible() { return cards.filter(function (c) { return !c.hidden; }); }
  function select(card) {
    if (current) { current.classList.remove("current"); }
    current = card;
    if (card) {
      card.classList.add("current");
      card.focus({preventScroll: true});
      card.scrollIntoView({block: "nearest"});
    }
  }
  function apply() {
    var only = box.checked;
    cards.forEach(function (c) { c.hidden = only && c.dataset.flagged !== "1"; });
    var n = visible().length;
    shown.textContent = n + " of " + cards.length + " shown";
    if (current && current.hidden) { select(null); }
  }
  function move(step) {
    var list = visible();
    if (!list.length) { return; }
    var i = current ? list.indexOf(current) : -1;
    var next = i < 0 ? (step > 0 ? 0 : list.length - 1)
                     : Math.min(list.length - 1, Math.max(0, i + step));
    select(list[next]);
  }
  box.addEventListener("change", apply);
  cards.forEach(function (c) {
    c.addEventListener("click", function () { select(c); });
  });
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) { return; }
    var tag = e.target && e.target.tagName;
    if (tag === "INPUT" && e.target.type !== "checkbox") { return; }
    if (e.key === "j" || e.key === "ArrowDown" || e.key === "ArrowRight") {
      move(1); e.preventDefault();
    } else if (e.key === "k" || e.key === "ArrowUp" || e.key === "ArrowLeft") {
      move(-1); e.preventDefault();
    } else if (e.key === "f") {
      if (!box.disabled) { box.checked = !box.checked; apply(); }
      e.preventDefault();
    } else if (e.key === "o" && current) {
      var link = current.querySelector("a.mask-link");
      if (link) { window.location.href = link.href; }
    }
  });
  apply();
}());
"""


def _href(path: str) -> str:
    return html.escape(quote(path.replace(os.sep, "/")), quote=True)


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _card_html(card: Card, rank: int, palette: Any, overlay_dir: str | None,
               mask_links: bool, flag_below: float) -> str:
    e = html.escape
    stem = Path(card.query).stem
    overlay = f"{overlay_dir}/{stem}.png" if overlay_dir else None
    parts = [f'<article class="card{" flagged" if card.flagged else ""}" tabindex="-1" '
             f'data-rank="{rank}" data-query="{e(card.query)}" '
             f'data-flagged="{1 if card.flagged else 0}" '
             f'data-quality="{"" if card.quality_min is None else f"{card.quality_min:.6f}"}">',
             f'<h2><span class="rank">#{rank}</span> <span class="name">{e(card.query)}</span>']
    if card.flagged:
        parts.append('<span class="badge">flagged</span>')
    if card.worst is not None:
        parts.append(f'<span class="qmin">quality {_num(card.quality_min)} '
                     f'({e(card.worst.name)})</span>')
    parts.append("</h2>")
    if overlay:
        parts.append(f'<a href="{_href(overlay)}"><img src="{_href(overlay)}" loading="lazy" '
                     f'alt="overlay of {e(card.query)}"></a>')
    parts.append('<table><thead><tr><th></th><th>label</th><th>name</th>'
                 '<th class="num">area px</th><th class="num">quality</th></tr></thead><tbody>')
    for line in card.labels:
        r, g, b = (int(c) for c in palette[line.label])
        low = line.quality is not None and line.quality < flag_below
        parts.append(f'<tr{" class=low" if low else ""}>'
                     f'<td><span class="swatch" style="background:rgb({r},{g},{b})"></span></td>'
                     f'<td>{line.label}</td><td>{e(line.name)}</td>'
                     f'<td class="num">{line.area}</td>'
                     f'<td class="num quality">{_num(line.quality)}</td></tr>')
    parts.append("</tbody></table><p class=links>")
    links = []
    if mask_links:
        links.append(f'<a class="mask-link" href="{_href(stem + ".png")}">label PNG</a>')
    if overlay:
        links.append(f'<a href="{_href(overlay)}">overlay</a>')
    parts.append(" · ".join(links) + "</p></article>")
    return "".join(parts)


def render_review_page(cards: Sequence[Card], names: Mapping[int, str], *,
                       flag_below: float = 0.5, overlay_dir: str | None = "overlay",
                       mask_links: bool = True, random_weights: bool | None = None,
                       failed: Sequence[tuple[str, str]] = (), title: str = "SST review"
                       ) -> str:
    """The page's HTML for ``cards`` (in the order given). ``overlay_dir``: where the
    overlays are, relative to the page (None: none written); ``mask_links``: link each
    query's ``<stem>.png``; ``random_weights``: say loudly that the masks are meaningless;
    ``failed``: ``(query, problem)`` listed at the end."""
    e = html.escape
    has_quality = any(c.quality_min is not None for c in cards)
    flagged = sum(c.flagged for c in cards)
    palette = label_palette(max(256, max((ln.label for c in cards for ln in c.labels),
                                         default=0) + 1))
    if has_quality:
        summary = (f"{len(cards)} queries, worst first by their lowest label quality "
                   f"(cycle IoU); {flagged} flagged (below {flag_below:g}).")
    else:
        summary = (f"{len(cards)} queries in name order; quality was not computed "
                   "(run with --quality to rank and flag them).")
    labels = ", ".join(f"{lab} {names[lab]}" for lab in sorted(names))
    head = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}: {len(cards)} queries</title>", f"<style>{_CSS}</style>",
        "</head>", "<body>", "<header>", f"<h1>{e(title)}</h1>",
        f'<p class="summary">{e(summary)} Labels: {e(labels)}.</p>']
    if random_weights:
        head.append('<p class="warning" id="random-weights">RANDOM WEIGHTS: these masks come '
                    "from an untrained model and are meaningless; they only show that the "
                    "pipeline runs.</p>")
    head.append(
        '<div class="controls"><label><input type="checkbox" id="flagged-only"'
        f'{"" if has_quality else " disabled"}> flagged only (f)</label>'
        f'<span class="shown" id="shown">{len(cards)} of {len(cards)} shown</span>'
        '<span class="keys">j / k or arrows: next / previous card · o: open its label PNG'
        "</span></div></header>")
    body = ['<main id="cards">']
    body += [_card_html(c, i, palette, overlay_dir, mask_links, flag_below)
             for i, c in enumerate(cards, start=1)]
    body.append("</main>")
    if failed:
        body.append('<section class="failed"><h2>Not segmented</h2><ul>')
        body += [f"<li>{e(q)}: {e(p)}</li>" for q, p in failed]
        body.append("</ul></section>")
    body += [f"<script>{_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(head + body)


def write_review_page(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]],
                      names: Mapping[int, str], *, flag_below: float = 0.5,
                      overlay_dir: str | None = "overlay", mask_links: bool = True,
                      random_weights: bool | None = None,
                      failed: Sequence[tuple[str, str]] = ()) -> Path:
    """Write ``review.html`` (atomically) for ``results`` rows; returns its path."""
    cards = review_cards(rows, names, flag_below)
    text = render_review_page(cards, names, flag_below=flag_below, overlay_dir=overlay_dir,
                              mask_links=mask_links, random_weights=random_weights,
                              failed=failed)
    target = Path(path)
    with atomic_write(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
