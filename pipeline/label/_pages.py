"""The labelling app's three pages: plain HTML and JavaScript, no build step. Every request they
make carries the session's token (query and ``X-Token`` header); names are set as text, never
as markup."""

_HEAD = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>cnn-codes label: {title}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:0;color:#222;background:#fafafa}}
nav{{background:#233;padding:8px 14px}} nav a{{color:#dee;margin-right:16px;text-decoration:none}}
nav a.on{{color:#fff;font-weight:bold}} main{{padding:12px 16px}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}
.card{{background:#fff;border:2px solid #ddd;border-radius:6px;padding:6px;width:200px}}
.card.cur{{border-color:#2a7}} .card.done{{opacity:.45}} .card img{{width:200px;height:160px;object-fit:contain;background:#eee}}
.tag{{display:inline-block;background:#e6f2ec;border-radius:3px;padding:1px 5px;margin:1px}}
.tag.pick{{background:#2a7;color:#fff}} .muted{{color:#777}} .keys span{{margin-right:10px}}
button{{margin:2px}} table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}
.pair{{display:flex;gap:10px;margin-bottom:10px}} #msg{{color:#a33;min-height:1.2em}} #msg.ok{{color:#276}}
</style></head><body>
<nav><a href="label" id="nav-label">Label next</a><a href="review" id="nav-review">Review</a>
<a href="progress" id="nav-progress">Progress</a><span id="status" class="muted"></span></nav>
<main><div id="msg"></div>{body}</main>
<script>
// The token came in the address once: the server set it as this site's cookie, so it leaves the
// address bar and the history; requests carry the cookie (and the header while this page knows it).
const TOKEN = new URLSearchParams(location.search).get('token') || '';
if (TOKEN) history.replaceState(null, '', location.pathname);
const TAB = sessionStorage.getItem('cnn-codes-tab') || (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
sessionStorage.setItem('cnn-codes-tab', TAB);
document.getElementById('nav-{page}').className = 'on';
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function api(path, body) {{
  const headers = {{'X-Tab': TAB}};
  if (TOKEN) headers['X-Token'] = TOKEN;
  const init = body === undefined ? {{headers}} :
    {{method: 'POST', headers: {{...headers, 'Content-Type': 'application/json'}}, body: JSON.stringify(body)}};
  for (let wait = 1000; ; wait = Math.min(2 * wait, 10000)) {{
    let r;
    try {{ r = await fetch(path, init); }}
    catch (err) {{  // the server is gone (stopped, restarting): said, and tried again
      say('the labelling app is not answering (stopped or restarting?): trying again in ' + wait / 1000 + ' s');
      await sleep(wait); continue;
    }}
    const data = await r.json().catch(() => ({{}}));
    if (r.status === 403) {{ say('this page has no valid token: open the address the label command printed'); throw new Error('403'); }}
    if (!r.ok) {{ say(data.error || ('error ' + r.status)); throw new Error(data.error || r.status); }}
    if (document.getElementById('msg').textContent.startsWith('the labelling app is not answering')) say('');
    return data;
  }}
}}
function say(t, ok) {{ const m = document.getElementById('msg'); m.textContent = t || ''; m.className = ok ? 'ok' : ''; }}
function el(tag, attrs, ...kids) {{
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {{}})) {{ if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f); else e.setAttribute(k, v); }}
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}}
function img(path) {{ return el('img', {{src: 'image/' + path.split('/').map(encodeURIComponent).join('/'), alt: path, title: path}}); }}
</script>
{script}
</body></html>"""

_LABEL_BODY = """<h2>Label next <span id="strategy" class="muted"></span></h2>
<div class="keys muted"><span>1-9: class (0: 10th)</span><span>Enter: accept the suggestion</span><span>s: skip</span>
<span>x: exclude</span><span>u: undo</span><span>&larr; &rarr;: move</span><span>c: any class by name (a new one too)</span>
<span>g: groups of look-alikes (click or space: take one out; Enter or a class key: label the rest)</span></div>
<p id="classes"></p>
<p><input id="classname" list="classlist" placeholder="class name, Enter: label the current image"><datalist id="classlist"></datalist></p>
<div class="grid" id="grid"></div>"""

_LABEL_SCRIPT = """<script>
let batch = [], cur = 0, classes = [], multi = false, mine = [], version = 0, mode = 'one', grp = null;
async function loadGroup() {
  await loadClasses();
  const g = await api('api/group');
  version = Math.max(version, g.version || 0);
  grp = {suggested: g.suggested, images: g.images.map(x => ({...x, out: false}))}; cur = 0;
  document.getElementById('strategy').textContent = '(a group of look-alikes: ' +
    (g.suggested ? 'suggested ' + g.suggested + ', Enter labels them' : 'no suggestion yet, a class key labels them') + ')';
  if (!grp.images.length) say('no unlabelled image left for a group');
  drawGroup();
}
function drawGroup() {
  const g = document.getElementById('grid'); g.textContent = '';
  grp.images.forEach((x, i) => g.append(el('div', {class: 'card' + (i === cur ? ' cur' : '') + (x.out ? ' done' : ''),
    'data-path': x.path, on: {click: () => { x.out = !x.out; cur = i; drawGroup(); }}}, img(x.path), el('div', {}, x.path),
    el('div', {class: 'muted'}, x.out ? 'taken out: back to the pool' : (grp.suggested || 'class?')))));
  const shown = g.querySelector('.card.cur');
  if (shown && shown.scrollIntoView) shown.scrollIntoView({block: 'nearest'});
}
async function labelGroup(name) {
  const paths = grp.images.filter(x => !x.out).map(x => x.path);
  if (!paths.length) { say('every image was taken out of the group'); return; }
  const r = await api('api/decide-group', {paths: paths, labels: [name]});
  mine.push({ids: r.ids});
  say('labelled ' + paths.length + ' image(s) ' + name, true);
  await loadGroup();
}
async function groupKey(e) {
  const x = grp && grp.images[cur];
  if (/^[0-9]$/.test(e.key)) { const i = (Number(e.key) + 9) % 10; if (i < classes.length) await labelGroup(classes[i]); }
  else if (e.key === 'Enter') { if (grp.suggested) await labelGroup(grp.suggested); else say('no suggestion: press a class key'); }
  else if ((e.key === ' ' || e.key === 'r') && x) { e.preventDefault(); x.out = !x.out; drawGroup(); }
  else if (e.key === 'ArrowRight') { cur = Math.min(cur + 1, grp.images.length - 1); drawGroup(); }
  else if (e.key === 'ArrowLeft') { cur = Math.max(cur - 1, 0); drawGroup(); }
  else if (e.key === 'u' || e.key === 'Backspace') { e.preventDefault(); await undo(); await loadGroup(); }
}
async function loadClasses() {
  const p = await api('api/progress'); classes = p.classes; multi = p.multi_label;
  const box = document.getElementById('classes'); box.textContent = '';
  classes.forEach((c, i) => box.append(el('span', {class: 'tag'}, (i < 10 ? ((i + 1) % 10) + ': ' : '') + c)));
  const list = document.getElementById('classlist'); list.textContent = '';
  for (const c of classes) list.append(el('option', {value: c}));
  document.getElementById('status').textContent = p.labelled + ' of ' + p.images + ' labelled';
}
async function nextBatch() {
  await loadClasses();
  const b = await api('api/next');
  version = Math.max(version, b.version || 0);
  batch = b.images.map(x => ({...x, picked: multi ? [...x.suggested] : x.suggested.slice(0, 1), done: null}));
  cur = 0; document.getElementById('strategy').textContent = b.strategy ? '(' + b.strategy + ', ' + b.pool + ' in the pool)' : '';
  if (!batch.length) say('every image has a label, is skipped or is excluded');
  draw();
}
function draw() {
  const g = document.getElementById('grid'); g.textContent = '';
  batch.forEach((x, i) => {
    const tags = el('div');
    for (const c of classes) if (x.picked.includes(c) || x.proba[c] !== undefined)
      tags.append(el('span', {class: 'tag' + (x.picked.includes(c) ? ' pick' : '')}, c + (x.proba[c] !== undefined ? ' ' + Math.round(100 * x.proba[c]) + '%' : '')));
    const state = x.done ? el('div', {class: 'muted'}, x.done) : el('div', {class: 'muted'}, x.suggested.length ? 'suggested' : 'no suggestion yet');
    g.append(el('div', {class: 'card' + (i === cur ? ' cur' : '') + (x.done ? ' done' : ''), 'data-path': x.path,
                        on: {click: () => { cur = i; draw(); }}}, img(x.path), el('div', {}, x.path), tags, state));
  });
  const shown = g.querySelector('.card.cur');
  if (shown && shown.scrollIntoView) shown.scrollIntoView({block: 'nearest'});
}
let following = false;
async function follow() {  // decisions of other tabs and edits of the file, on this page within 2 s
  if (following) return;  // (one poll at a time: a poll waiting on a stopped server is not stacked)
  following = true;
  try {
    const s = await api('api/state?since=' + version);
    document.getElementById('status').textContent = s.labelled + ' of ' + s.images + ' labelled';
    for (const e of s.events) {
      version = Math.max(version, e.version);
      if (e.kind === 'file') { say(e.text, true); continue; }
      if (e.tab === TAB) continue;
      const x = batch.find(b => b.path === e.path);
      if (!x) continue;
      x.done = e.kind === 'undo' ? null : (e.excluded ? 'excluded in another tab' : 'labelled in another tab: ' + e.labels.join(', '));
      say((e.kind === 'undo' ? 'another tab undid ' : 'another tab labelled ') + e.text, true);
    }
    if (s.events.length && mode === 'one') draw();
  } catch (err) {} finally { following = false; }
}
setInterval(follow, 2000);
function advance() {
  const open = batch.findIndex((x, i) => i > cur && !x.done);
  const any = batch.findIndex(x => !x.done);
  if (any < 0) { nextBatch(); return; }
  cur = open >= 0 ? open : any; draw();
}
async function decide(labels, exclude) {
  const x = batch[cur]; if (!x) return;
  const d = await api('api/decide', {path: x.path, labels: labels, exclude: !!exclude});
  mine.push({id: d.id, index: cur}); x.done = exclude ? 'excluded' : 'labelled ' + labels.join(', ');
  const st = document.getElementById('status'), m = /^(\d+) of/.exec(st.textContent);
  if (m && !x.counted && !exclude) { st.textContent = st.textContent.replace(/^\d+/, Number(m[1]) + 1); x.counted = true; }
  advance();
}
async function undo() {  // this tab's own last decision (after a reload: the server knows it by the tab)
  const last = mine.pop();
  if (last && last.ids) {  // a group: every image of it
    for (const id of last.ids.slice().reverse()) await api('api/undo', {id: id});
    say('undone: a group of ' + last.ids.length, true); return;
  }
  const r = await api('api/undo', last ? {id: last.id} : {});
  if (r.undone === null) { say('nothing of this tab to undo'); return; }
  const i = batch.findIndex(b => b.path === r.path);
  if (i >= 0) { batch[i].done = null; cur = i; }
  say('undone: ' + r.path, true); draw();
}
document.addEventListener('keydown', async (e) => {
  if (e.target.tagName === 'INPUT') return;
  const x = batch[cur]; say('');
  try {
    if (e.key === 'g' && !multi) { mode = mode === 'one' ? 'group' : 'one'; if (mode === 'group') await loadGroup(); else await nextBatch(); return; }
    if (mode === 'group') { await groupKey(e); return; }
    if (/^[0-9]$/.test(e.key)) {
      const i = (Number(e.key) + 9) % 10; if (i >= classes.length || !x) return;
      if (multi) { x.picked = x.picked.includes(classes[i]) ? x.picked.filter(c => c !== classes[i]) : [...x.picked, classes[i]]; draw(); }
      else await decide([classes[i]]);
    } else if (e.key === 'Enter' && x) { if (x.picked.length || multi) await decide(x.picked); else say('no suggestion: press a class key'); }
    else if (e.key === 's' && x) { await api('api/skip', {path: x.path}); x.done = 'skipped'; advance(); }
    else if (e.key === 'x' && x) await decide([], true);
    else if (e.key === 'u' || e.key === 'Backspace') { e.preventDefault(); await undo(); }
    else if (e.key === 'ArrowRight') { cur = Math.min(cur + 1, batch.length - 1); draw(); }
    else if (e.key === 'ArrowLeft') { cur = Math.max(cur - 1, 0); draw(); }
    else if (e.key === 'c' || e.key === 'n') { e.preventDefault(); document.getElementById('classname').focus(); }
  } catch (err) {}
});
document.getElementById('classname').addEventListener('keydown', async (e) => {
  const box = e.target;
  if (e.key === 'Escape') { box.blur(); return; }
  if (e.key !== 'Enter' || !box.value.trim() || !batch[cur]) return;
  const name = box.value.trim();
  try {
    if (!classes.includes(name)) { await api('api/class', {name: name}); await loadClasses(); }
    if (multi) { const x = batch[cur]; x.picked = x.picked.includes(name) ? x.picked.filter(c => c !== name) : [...x.picked, name]; draw(); }
    else await decide([name]);
    box.value = ''; box.blur();
  } catch (err) {}
});
nextBatch();
</script>"""

_REVIEW_BODY = """<h2>Review</h2><p class="muted" id="note"></p>
<h3>Likely label errors <span class="muted">(given &rarr; suggested)</span></h3><div class="grid" id="issues"></div>
<h3>Same photo, two classes or both sides of the split</h3><div id="pairs"></div>
<details id="look-alikes-box"><summary>Look-alikes across classes: likely different photographs (<span id="n-look-alikes">0</span>)</summary>
<div id="look-alikes"></div></details>
<h3>Outliers</h3><div class="grid" id="outliers"></div>"""

_REVIEW_SCRIPT = """<script>
let classes = [];
function actions(path, given, suggested) {  // label lists: one class each in a single-label set
  const box = el('div'), name = ls => ls.join('|') || '(no label)';
  if (suggested && suggested.length) box.append(el('button', {class: 'accept', on: {click: () => act(path, suggested)}}, 'accept ' + name(suggested)));
  box.append(el('button', {class: 'keep', on: {click: () => act(path, given)}}, 'keep ' + name(given)));
  const pick = el('select', {class: 'other'}, el('option', {value: ''}, 'another class...'));
  for (const c of classes) pick.append(el('option', {value: c}, c));
  pick.addEventListener('change', () => pick.value && act(path, [pick.value]));
  box.append(pick, el('button', {class: 'exclude', on: {click: () => act(path, [], true)}}, 'exclude'));
  return box;
}
async function act(path, labels, exclude) {
  await api('api/decide', {path: path, labels: labels, exclude: !!exclude, reviewed: true});
  say((exclude ? 'excluded ' : 'labelled ' + labels.join(', ') + ': ') + path, true); load();
}
async function load() {
  classes = (await api('api/progress')).classes;
  const r = await api('api/review');
  document.getElementById('note').textContent = r.note || (!r.issues.length && !r.pairs.length && !r.outliers.length
    ? 'nothing found: no likely label error, no copy across classes or the split, no outlier' : '');
  const issues = document.getElementById('issues'); issues.textContent = '';
  for (const x of r.issues) issues.append(el('div', {class: 'card issue', 'data-path': x.path}, img(x.path), el('div', {}, x.path),
    el('div', {}, x.given + ' \\u2192 ' + x.suggested + ' (p given ' + x.p_given + ')'), actions(x.path, x.given_labels, x.suggested_labels)));
  const pairs = document.getElementById('pairs'), alike = document.getElementById('look-alikes');
  pairs.textContent = ''; alike.textContent = '';
  document.getElementById('n-look-alikes').textContent = r.pairs.filter(p => p.tier === 'look-alike' && !p.across_split).length;
  for (const p of r.pairs) (p.tier === 'look-alike' && !p.across_split ? alike : pairs).append(el('div', {class: 'pair'},
    el('div', {class: 'card'}, img(p.a), el('div', {}, p.a + ': ' + p.given_a), actions(p.a, p.labels_a, p.given_a !== p.given_b ? p.labels_b : null)),
    el('div', {class: 'card'}, img(p.b), el('div', {}, p.b + ': ' + p.given_b), actions(p.b, p.labels_b, p.given_a !== p.given_b ? p.labels_a : null)),
    el('div', {class: 'muted'}, p.tier + ', cosine ' + p.similarity + (p.across_split ? ', across the split' : ''))));
  const outliers = document.getElementById('outliers'); outliers.textContent = '';
  for (const x of r.outliers) outliers.append(el('div', {class: 'card'}, img(x.path), el('div', {}, x.path + ': ' + x.given), actions(x.path, x.given_labels, null)));
}
load();
</script>"""

_PROGRESS_BODY = """<h2>Progress</h2><p id="summary"></p><svg id="curve" width="520" height="240"></svg>
<table id="counts"><thead><tr><th>class</th><th>labels</th></tr></thead><tbody></tbody></table>"""

_PROGRESS_SCRIPT = """<script>
async function load() {
  const p = await api('api/progress');
  const last = p.curve.length ? p.curve[p.curve.length - 1] : null;
  const shown = last === null ? 'not yet (two labels per class needed)'
    : last[1].toFixed(3) + (last.length > 3 ? ' (95% interval ' + last[2].toFixed(3) + ' to ' + last[3].toFixed(3) + ')' : '');
  document.getElementById('summary').textContent = p.labelled + ' of ' + p.images + ' images labelled, ' + p.excluded +
    ' excluded; estimated ' + p.metric + ' (cross-validated on the labelled images): ' + shown +
    (p.note ? '; ' + p.note : '');
  const body = document.querySelector('#counts tbody'); body.textContent = '';
  p.classes.forEach((c, i) => body.append(el('tr', {}, el('td', {}, c), el('td', {}, p.counts[i]))));
  const svg = document.getElementById('curve'); svg.textContent = '';
  const ns = 'http://www.w3.org/2000/svg', W = 520, H = 240, m = 36;
  const maxN = Math.max(1, ...p.curve.map(c => c[0]));
  const X = n => m + (W - 2 * m) * n / maxN, Y = a => H - m - (H - 2 * m) * a;
  const line = (x1, y1, x2, y2) => { const l = document.createElementNS(ns, 'line'); for (const [k, v] of Object.entries({x1, y1, x2, y2, stroke: '#999'})) l.setAttribute(k, v); svg.append(l); };
  const text = (x, y, t) => { const e = document.createElementNS(ns, 'text'); e.setAttribute('x', x); e.setAttribute('y', y); e.setAttribute('font-size', 11); e.textContent = t; svg.append(e); };
  line(m, H - m, W - m, H - m); line(m, m, m, H - m); text(4, Y(1) + 4, '1.0'); text(4, Y(0) + 4, '0.0');
  text(W / 2 - 20, H - 4, 'labels');
  for (let k = 0; k <= 4; k++) { const n = Math.round(maxN * k / 4); line(X(n), H - m, X(n), H - m + 4); text(X(n) - 8, H - m + 16, String(n)); }
  if (p.curve.length) {
    const banded = p.curve.filter(c => c.length > 3);  // the 95% interval as a band under the line
    if (banded.length) {
      const band = document.createElementNS(ns, 'polygon');
      band.setAttribute('points', banded.map(c => X(c[0]) + ',' + Y(c[3])).concat(banded.slice().reverse().map(c => X(c[0]) + ',' + Y(c[2]))).join(' '));
      band.setAttribute('fill', '#2a7'); band.setAttribute('fill-opacity', 0.15); band.setAttribute('stroke', 'none'); svg.append(band);
    }
    p.curve.forEach(c => { const dot = document.createElementNS(ns, 'circle'); dot.setAttribute('cx', X(c[0])); dot.setAttribute('cy', Y(c[1])); dot.setAttribute('r', 3); dot.setAttribute('fill', '#2a7'); svg.append(dot); });
    const path = document.createElementNS(ns, 'polyline');
    path.setAttribute('points', p.curve.map(c => X(c[0]) + ',' + Y(c[1])).join(' '));
    path.setAttribute('fill', 'none'); path.setAttribute('stroke', '#2a7'); path.setAttribute('stroke-width', 2); svg.append(path);
  }
}
load(); setInterval(load, 10000);
</script>"""

PAGES = {
    "label": ("Label next", _LABEL_BODY, _LABEL_SCRIPT),
    "review": ("Review", _REVIEW_BODY, _REVIEW_SCRIPT),
    "progress": ("Progress", _PROGRESS_BODY, _PROGRESS_SCRIPT),
}


def render(page: str) -> str:
    title, body, script = PAGES[page]
    return _HEAD.format(title=title, body=body, page=page, script=script)
