"""The page of the HTML report: one jinja2 template, its CSS and a few lines of inline JavaScript.

Self-contained: figures are data: URIs, nothing is fetched. The JavaScript (filter and sort of the
pairs table) sits in event-handler attributes rather than a <script> element, so that a page that
holds a <script is always one where a name escaped its escaping (the security tests check this).
Every value from a dump goes through jinja2's autoescape."""

from __future__ import annotations

# Keeps the rows whose text holds every word typed (case-insensitive) and counts them.
FILTER_JS = (
    "const q=this.value.toLowerCase().split(/\\s+/).filter(Boolean);let n=0;"
    "for(const r of document.getElementById('pairs').tBodies[0].rows){"
    "const t=r.textContent.toLowerCase();const ok=q.every(w=>t.includes(w));r.hidden=!ok;n+=ok}"
    "document.getElementById('shown').textContent=n"
)

# Sorts by the clicked column (numbers numerically, '-' last), again to reverse.
SORT_JS = (
    "const th=event.target.closest('th');if(!th)return;"
    "const tb=document.getElementById('pairs').tBodies[0],i=th.cellIndex,num=th.dataset.num;"
    "const dir=th.dataset.dir==='up'?-1:1;th.dataset.dir=dir===1?'up':'down';"
    "const key=r=>{const t=r.cells[i].textContent;if(!num)return t;"
    "const v=t==='inf'?Infinity:t==='-inf'?-Infinity:parseFloat(t);"
    "return isNaN(v)?dir*Infinity:v};"
    "const rows=Array.from(tb.rows);"
    "rows.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*dir});tb.append(...rows)"
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>accdump compare: {{ 'DIVERGED' if diverged else 'OK' }}</title>
<style>
:root{--red:#c62828;--green:#2e7d32;--line:#e2e4e8}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1f23;
 background:#f4f5f7;line-height:1.4}
main{max-width:1320px;margin:0 auto;padding:1em 2em 4em}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1em 1.4em;margin:1.1em 0}
h1{font-size:1.45em;margin:.3em 0}
h2{font-size:1.12em;margin:.1em 0 .6em}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;
 overflow-wrap:anywhere}
.paths{margin:.3em 0 .8em;color:#444}
.banner{font-size:1.1em;font-weight:600;padding:.8em 1em;border-radius:8px;color:#fff;
 overflow-wrap:anywhere}
.banner.bad{background:var(--red)}
.banner.ok{background:var(--green)}
.chips span{display:inline-block;padding:.12em .7em;border-radius:1em;margin:.4em .4em 0 0;font-size:.9em;
 border:1px solid #0001}
.note{color:#555;font-size:.9em;overflow-wrap:anywhere}
.findings li{color:#8a5a00}
.divcard{border:2px solid var(--red);background:#fff7f7}
.divcard h2{color:var(--red)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;margin:0}
dl.facts dt{color:#555}
dl.facts dd{margin:0;overflow-wrap:anywhere}
img{max-width:100%;display:block;margin:.4em 0}
table{border-collapse:collapse;font-size:.82em}
td,th{padding:2px 7px;border-bottom:1px solid #e6e7ea;text-align:right;white-space:nowrap}
th{background:#eef0f3;position:sticky;top:0;z-index:1}
table.meta{width:100%;font-size:.88em}
table.meta td,table.meta th{text-align:left;white-space:normal;vertical-align:top}
table.meta tbody th{font-weight:600;overflow-wrap:break-word;width:14%}
table.meta td.value{font-family:ui-monospace,Menlo,Consolas,monospace;width:42%;overflow-wrap:anywhere}
table.meta tr.differs td{background:#fff1c9}
table.meta td.mark{color:#b26a00;font-weight:700;width:2%}
.tablewrap{max-height:85vh;overflow:auto;border:1px solid var(--line)}
#pairs{width:100%}
#pairs thead th{cursor:pointer;user-select:none}
#pairs thead th:hover{background:#dfe3e8}
{% for i in left_columns %}#pairs th:nth-child({{ i }}),#pairs td:nth-child({{ i }}){text-align:left}
{% endfor %}
{% for i in wrapped_columns %}#pairs td:nth-child({{ i }}){white-space:normal;overflow-wrap:anywhere}
{% endfor %}
{% for i in name_columns %}#pairs td:nth-child({{ i }}){min-width:16em;
 font-family:ui-monospace,Menlo,Consolas,monospace}
{% endfor %}
tr.suspicious{background:#fff5cc}
tr.broken{background:#fbd5d5}
tr.catastrophic{background:#f39c9c}
tr.mismatch{background:#ead9f6}
tr.div{outline:3px solid var(--red);outline-offset:-3px;font-weight:700}
.v-pass{background:#e3f4e4}.v-suspicious{background:#fff0b3}.v-broken{background:#f8c4c4}
.v-catastrophic{background:#ee8f8f}.v-mismatch{background:#e2ccf3}
input[type=search]{font-size:1em;padding:.35em .6em;width:28em;max-width:100%;
 border:1px solid #bbb;border-radius:6px;margin:.2em 1em .6em 0}
</style></head><body><main>
<h1>accdump compare</h1>
<div class="paths">golden <code>{{ golden }}</code><br>target <code>{{ target }}</code></div>
<p class="banner {{ 'bad' if diverged else 'ok' }}" id="verdict">{{ verdict }}</p>
<div class="chips">
{% for label, n in counts %}<span class="v-{{ label }}">{{ n }} {{ label }}</span>{% endfor %}
<span>{{ n_pairs }} pairs</span><span>{{ only_g }} only in golden</span>
<span>{{ only_t }} only in target</span></div>
<p class="note">{{ steps }}</p>
{% if findings %}<ul class="findings">{% for f in findings %}<li>{{ f }}</li>{% endfor %}</ul>{% endif %}
{% if token %}<p><b>First differing token:</b> rank {{ token.rank }}, step {{ token.step }}, position
{{ token.position }}: golden {{ token.golden_token }}, target {{ token.target_token }}.</p>{% endif %}

{% if div %}<section class="divcard" id="first-divergence-card">
<h2>First divergence: <span class="mono">{{ div.name }}</span></h2>
<dl class="facts">
<dt>where</dt><dd>rank {{ div.rank }}, step {{ div.step }}, call {{ div.call }}, {{ div.role }} {{ div.arg }}
{% if div.golden_name != div.name %}(golden: <span class="mono">{{ div.golden_name }}</span>){% endif %}</dd>
<dt>verdict</dt><dd><span class="v-{{ div.verdict }}">&nbsp;{{ div.verdict }}&nbsp;</span>
{{ div.metrics }}</dd>
<dt>attributed to</dt><dd class="mono">{{ div.attributed_to }}</dd>
<dt>why</dt><dd>{{ div.explanation }}</dd>
{% if div.inputs %}<dt>its inputs</dt><dd>{% for name, verdict in div.inputs %}
<span class="mono">{{ name }}</span> <span class="v-{{ verdict }}">&nbsp;{{ verdict }}&nbsp;</span>
{{- ', ' if not loop.last }}{% endfor %}</dd>{% endif %}
<dt>last passing record</dt><dd class="mono">{{ div.last_passing }}</dd>
{% if div.worst_rows %}<dt>worst rows (tokens)</dt><dd>{{ div.worst_rows }}</dd>{% endif %}
{% if div.propagates %}<dt>afterwards</dt><dd>{{ div.propagates }}</dd>{% endif %}
</dl></section>{% endif %}

<section id="curves"><h2>Golden vs target along the run</h2>
{% for c in curves %}<h3>{{ c.title }}</h3><p class="note">{{ c.caption }}</p>
<img alt="{{ c.title }}" src="data:image/png;base64,{{ c.png }}">{% endfor %}
{% if not curves %}<p class="note">No pairs to plot.</p>{% endif %}
</section>

{% if div %}<section id="tokens"><h2>Per token at the first divergence</h2>
<p class="note">{{ token_note }}</p>
{% if token_png %}<img alt="per token at the first divergence" src="data:image/png;base64,{{ token_png }}">
{% endif %}
</section>{% endif %}

<section id="metadata"><h2>The two runs</h2>
{% if meta_rows %}<p class="note">{{ n_meta_diff }} of {{ meta_rows|length }} entries differ (marked ≠).</p>
<table class="meta"><thead><tr><th></th><th>key</th><th>golden</th><th>target</th></tr></thead><tbody>
{% for r in meta_rows %}<tr class="{{ 'differs' if r.differs else 'same' }}">
<td class="mark">{{ '≠' if r.differs }}</td><th>{{ r.key }}</th>
<td class="value">{{ r.golden }}</td><td class="value">{{ r.target }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% for n in meta_notes %}<p class="note">{{ n }}</p>{% endfor %}
</section>

<section id="all-pairs"><h2>All pairs</h2>
<input type="search" id="filter" placeholder="filter: words that must all appear, e.g. layers.1 broken"
 aria-label="filter the pairs" autocomplete="off" oninput="{{ filter_js }}">
<span class="note"><span id="shown">{{ rows|length }}</span> rows shown; click a column to sort.</span>
{% if table_note %}<p class="note">{{ table_note }}</p>{% endif %}
<div class="tablewrap"><table id="pairs"><thead onclick="{{ sort_js }}"><tr>
{% for label, num in columns %}<th{% if num %} data-num="1"{% endif %}>{{ label }}</th>{% endfor %}
</tr></thead>
<tbody>
{% for r in rows %}<tr class="{{ r.verdict }}{{ ' div' if r.div }}"
{%- if r.div %} id="first-divergence"{% endif %}>
{%- for c in r.cells %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
</section>

{% for title, names, more in only %}{% if names %}<section><h2>{{ title }}</h2><ul class="mono">
{% for n in names %}<li>{{ n }}</li>{% endfor %}</ul>
{% if more %}<p class="note">and {{ more }} more.</p>{% endif %}
</section>{% endif %}{% endfor %}
</main></body></html>
"""
