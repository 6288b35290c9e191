// pplx-embed search playground: a client of the server's public JSON API, nothing else.
// Every request carries the page's API key (when the server has keys) as a Bearer header.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

const PRECISION_LABEL = {
  "binary+rescore": "binary + int8 rescore", binary: "binary (Hamming only)", int8: "int8 (exact)",
  float: "float (exact)",
};
const KEY_STORE = "pplx-embed-api-key";
const PREVIEW = 300; // characters of a long hit text shown until "Show all" (less text to lay out per search)
const NEIGHBOURS = 2; // chunks shown either side of a contextual hit (one more is asked for, to know if there are more)
const state = { key: sessionStorage.getItem(KEY_STORE) || "", indexes: [], models: [], retry: null, timer: null };

// ---- elements ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function options(select, items, selected) {
  const keep = selected ?? select.value;
  select.replaceChildren(...items.map(([value, label]) => el("option", { value, text: label })));
  if (items.some(([value]) => String(value) === String(keep))) select.value = keep;
}

const ms = (x) => (x === undefined || x === null ? "–" : `${x.toFixed(x < 10 ? 2 : 1)} ms`);

// ---- the API ------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    Object.assign(this, { status, code, retryAfter });
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const start = performance.now();
  let response, text;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    text = await response.text();
  } catch (exc) {
    throw new ApiError(0, "network", `the server could not be reached (${exc.message})`);
  }
  const roundTrip = performance.now() - start;
  let data = null;
  try { data = JSON.parse(text); } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = (data && data.error) || { code: `http_${response.status}`, message: text.slice(0, 300) };
    throw new ApiError(response.status, error.code, error.message, response.headers.get("Retry-After"));
  }
  return { data, roundTrip };
}

// ---- messages -----------------------------------------------------------------------------------
function clearMessage() {
  clearInterval(state.timer);
  $("#message").hidden = true;
}

function showMessage(text, { busy = false, retry = null, wait = 0 } = {}) {
  clearInterval(state.timer);
  const box = $("#message"), button = $("#message-retry");
  box.classList.toggle("busy", busy);
  $("#message-text").textContent = text;
  box.hidden = false;
  state.retry = retry;
  button.hidden = !retry;
  if (retry) {
    let left = Math.ceil(wait);
    const tick = () => {
      button.disabled = left > 0;
      button.textContent = left > 0 ? `Retry in ${left} s` : "Retry";
      left -= 1;
    };
    tick();
    if (wait > 0) state.timer = setInterval(() => { tick(); if (left < 0) clearInterval(state.timer); }, 1000);
  }
}

// One sentence for a person: what happened and what to do about it.
function report(error, retry) {
  if (!(error instanceof ApiError)) throw error;
  const keyField = $("#api-key");
  if (error.status === 401) {
    const text = error.code === "invalid_api_key"
      ? "The API key was refused (invalid API key). Enter a valid key above."
      : "This server needs an API key. Enter it above.";
    showMessage(text);
    if (keyField) keyField.focus();
  } else if (error.status === 403) {
    showMessage(`This API key may not do that: ${error.message}.`);
  } else if (error.status === 429) {
    const wait = Number(error.retryAfter) || 1;
    showMessage(`The server is busy (${error.message}). Retry after ${wait} s.`, { busy: true, retry, wait });
  } else if (error.status === 503) {
    const wait = Number(error.retryAfter) || 5;
    showMessage(`The server is not ready: ${error.message}. Retry after ${wait} s.`, { busy: true, retry, wait });
  } else if (error.status >= 400 && error.status < 500) {
    showMessage(`The request was refused (${error.status} ${error.code}): ${error.message}`);
  } else if (error.status === 0) {
    showMessage(`The request failed: ${error.message}.`, { retry, wait: 0 });
  } else {
    showMessage(`The server failed (${error.status} ${error.code}): ${error.message}`, { retry, wait: 0 });
  }
}

// What a screen reader announces after each answer (the results themselves are not read out on every update).
function announce(text) {
  $("#status").textContent = text;
}

// ---- tabs (WAI-ARIA tabs: arrow keys, Home, End) ------------------------------------------------
function selectTab(tab, focus = false) {
  for (const other of $$('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
  }
  if (focus) tab.focus();
  if (tab.id === "tab-reports") loadReports();
}

function setUpTabs() {
  const tabs = $$('[role="tab"]');
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length], true);
    });
  }
}

// ---- the catalog: indexes and models the key may use -------------------------------------------
async function loadCatalog() {
  try {
    const [indexes, models] = await Promise.all([api("GET", "/v1/indexes"), api("GET", "/v1/models")]);
    state.indexes = indexes.data.data;
    state.models = models.data.data;
  } catch (error) {
    report(error, loadCatalog);
    return;
  }
  clearMessage();
  const wanted = new URLSearchParams(location.search).get("index");
  const indexItems = state.indexes.map((ix) => [ix.name, `${ix.name} (${ix.served_model}, ${ix.stats.items} items)`]);
  for (const select of [$("#s-index"), $("#c-a-index"), $("#c-b-index")]) options(select, indexItems, wanted);
  const modelItems = state.models.filter((m) => !m.split).map((m) => [m.id, `${m.id} (${m.dimension} dims)`]);
  options($("#e-model"), modelItems);
  for (const prefix of ["s", "c-a", "c-b"]) indexChanged(prefix);
  modelChanged();
  presets();
  document.body.dataset.ready = "true";
  if (!state.indexes.length) showMessage("No index is served. Start the server with --index NAME=PATH to search one.");
}

const indexNamed = (name) => state.indexes.find((ix) => ix.name === name);

function matryoshka(full) {
  const sizes = [];
  for (let d = 128; d < full; d *= 2) sizes.push(d);
  return [...sizes, full];
}

function indexChanged(prefix) {
  const ix = indexNamed($(`#${prefix}-index`).value);
  if (!ix) return;
  options($(`#${prefix}-precision`), ix.search.precisions.map((p) => [p, PRECISION_LABEL[p] || p]));
  options($(`#${prefix}-dimensions`), ix.search.dimensions.map((d) => [d, String(d)]), ix.stats.dimensions);
}

function modelChanged() {
  const model = state.models.find((m) => m.id === $("#e-model").value);
  if (model) options($("#e-dimensions"), matryoshka(model.dimension).map((d) => [d, String(d)]), model.dimension);
}

// ---- filters ------------------------------------------------------------------------------------
function addFilterRow(fieldset) {
  const rows = $(".filter-rows", fieldset), n = rows.children.length + 1, prefix = fieldset.dataset.prefix;
  const key = `${prefix}-filter-key-${n}`, value = `${prefix}-filter-value-${n}`;
  const remove = el("button", { type: "button", "aria-label": `Remove filter ${n}`, text: "Remove" });
  const row = el("div", { class: "filter-row" },
    el("div", { class: "field" }, el("label", { for: key, text: `Filter key ${n}` }),
      el("input", { id: key, class: "filter-key", autocomplete: "off", placeholder: "lang" })),
    el("div", { class: "field" }, el("label", { for: value, text: `Filter value ${n}` }),
      el("input", { id: value, class: "filter-value", autocomplete: "off", placeholder: "en",
                    "aria-describedby": `${prefix}-filter-hint` })),
    remove);
  remove.addEventListener("click", () => { row.remove(); });
  rows.append(row);
  return row;
}

function readFilter(fieldset) {
  const filter = {};
  for (const row of $$(".filter-row", fieldset)) {
    const key = $(".filter-key", row).value.trim();
    if (!key) continue;
    const raw = $(".filter-value", row).value;
    let value = raw;
    try {
      const parsed = JSON.parse(raw);
      if (parsed === null || ["number", "boolean", "string"].includes(typeof parsed)) value = parsed;
    } catch { /* plain text */ }
    filter[key] = value;
  }
  return Object.keys(filter).length ? filter : undefined;
}

// ---- search requests and their results ---------------------------------------------------------
function searchBody(query, k, precision, dimensions, filter, ix) {
  const body = { query, k, precision, dimensions };
  if (filter) body.filter = filter;
  if (ix.stats.contextual) body.neighbours = NEIGHBOURS + 1;
  return body;
}

function bytesPerVector(precision, dims) {
  return { "binary+rescore": `${dims / 8} B searched + ${dims} B rescoring`, binary: `${dims / 8} B`,
           int8: `${dims} B`, float: `${4 * dims} B` }[precision];
}

function pyLiteral(value, indent = "") {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") return String(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) return `[${value.map((v) => pyLiteral(v, inner)).join(", ")}]`;
  const items = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pyLiteral(v, inner)},`);
  return `{\n${items.join("\n")}\n${indent}}`;
}

function snippets(path, body) {
  const url = new URL(path, location.href).href, json = JSON.stringify(body);
  const auth = document.body.dataset.auth === "required";
  const curl = [`curl -s '${url}' \\`, "  -H 'Content-Type: application/json' \\"];
  if (auth) curl.push('  -H "Authorization: Bearer $PPLX_EMBED_API_KEY" \\');
  curl.push(`  -d '${json.replaceAll("'", "'\\''")}'`);
  const python = ["import json", ...(auth ? ["import os"] : []), "", "import httpx", "",
    "response = httpx.post(", `    ${JSON.stringify(url)},`,
    ...(auth ? ['    headers={"Authorization": f"Bearer {os.environ[\'PPLX_EMBED_API_KEY\']}"},'] : []),
    `    json=${pyLiteral(body, "    ")},`, "    timeout=60,", ")", "response.raise_for_status()",
    "print(json.dumps(response.json(), indent=1))"];
  return { curl: curl.join("\n"), python: python.join("\n") };
}

function copyButtons(path, body) {
  const pre = el("pre", { class: "snippet", tabindex: "0", hidden: true });
  const status = el("span", { class: "status", role: "status" });
  const texts = snippets(path, body);
  const button = (kind, label) => {
    const b = el("button", { type: "button", text: label, "data-copy": kind });
    b.addEventListener("click", async () => {
      pre.textContent = texts[kind];
      pre.dataset.kind = kind;
      pre.hidden = false;
      try {
        await navigator.clipboard.writeText(texts[kind]);
        status.textContent = `${label.replace("Copy as", "Copied as")} to the clipboard.`;
      } catch {
        status.textContent = "Select the text below and copy it.";
      }
      if (document.body.dataset.auth === "required") status.textContent += " It reads your key from PPLX_EMBED_API_KEY.";
    });
    return b;
  };
  return [el("div", { class: "copy" }, button("curl", "Copy as curl"), button("python", "Copy as Python"), status), pre];
}

function hitItem(hit, rank, marks) {
  const head = el("div", { class: "hit-head" }, el("span", { class: "rank", text: `#${rank}` }),
    el("span", { class: "score", text: hit.score.toFixed(4), title: "score" }),
    el("code", { class: "id", text: hit.id }), ...(marks || []).map((m) => el("span", { class: "tag", text: m })));
  const meta = Object.entries(hit.metadata || {});
  const metaList = meta.length ? el("dl", { class: "meta" }, meta.map(([key, value]) =>
    el("div", {}, el("dt", { text: key }), el("dd", { text: JSON.stringify(value) })))) : null;
  const item = el("li", { class: "hit", "data-id": hit.id }, head);
  if (hit.doc_id !== null && hit.doc_id !== undefined && hit.position !== null) {
    item.append(documentView(hit));
  } else {
    item.append(textView(hit.text ?? ""));
  }
  if (metaList) item.append(metaList);
  return item;
}

function textView(text) {
  if (text.length <= PREVIEW + 60) return el("p", { class: "text", text });
  const short = `${text.slice(0, PREVIEW)}…`;
  const shown = el("span", { text: short });
  const toggle = el("button", { type: "button", class: "more-text", "aria-expanded": "false", text: "Show all" });
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    shown.textContent = open ? text : short;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Show less" : "Show all";
  });
  return el("p", { class: "text" }, shown, " ", toggle);
}

// A contextual hit inside its document: the chunk highlighted between its neighbours.
function documentView(hit) {
  const near = (hit.neighbours || []).filter((n) => Math.abs(n.position - hit.position) <= NEIGHBOURS);
  const more = (hit.neighbours || []).some((n) => n.position > hit.position + NEIGHBOURS);
  const chunk = (position, text, isHit) => el("li", { class: isHit ? "chunk hit-chunk" : "chunk",
                                                     "data-position": position },
    el("span", { class: "pos", text: `§${position}` }), isHit ? el("mark", { text }) : text);
  const before = near.filter((n) => n.position < hit.position), after = near.filter((n) => n.position > hit.position);
  const list = el("ol", { class: "chunks", "aria-label": `chunks of document ${hit.doc_id}` });
  const first = before.length ? before[0].position : hit.position;
  if (first > 0) list.append(el("li", { class: "chunk more", text: "…" }));
  for (const n of before) list.append(chunk(n.position, n.text, false));
  list.append(chunk(hit.position, hit.text ?? "", true));
  for (const n of after) list.append(chunk(n.position, n.text, false));
  if (more) list.append(el("li", { class: "chunk more", text: "…" }));
  return el("div", { class: "doc" }, el("p", { class: "doc-title", text: `document ${hit.doc_id}, chunk ${hit.position}` }),
    list);
}

function renderResults(pane, result, path, body, title, marksFor) {
  const { data, roundTrip } = result;
  const hits = data.data[0].hits, t = data.timings;
  const parts = [title ? el("h2", { text: title }) : null,
    el("p", { class: "summary" }, `${hits.length} hits · ${PRECISION_LABEL[data.precision] || data.precision} · ` +
      `${data.dimensions} dims · ${bytesPerVector(data.precision, data.dimensions)} per vector · model ${data.model}`),
    el("dl", { class: "timings", "aria-label": "time per stage" },
      [["embed", t.embed_ms], ["first stage", t.first_stage_ms], ["rescore", t.rescore_ms], ["fetch", t.fetch_ms],
       ["server", t.total_ms], ["round trip", roundTrip]].map(([name, value]) =>
        el("div", { "data-stage": name }, el("dt", { text: name }), el("dd", { text: ms(value) })))),
    ...copyButtons(path, body),
    hits.length ? el("ol", { class: "hits" }, hits.map((hit, i) => hitItem(hit, i + 1, marksFor && marksFor(hit))))
      : el("p", { class: "empty", text: "No item matches." })];
  pane.replaceChildren(...parts.filter(Boolean));
}

async function runSearch(event) {
  if (event) event.preventDefault();
  const start = performance.now();
  const ix = indexNamed($("#s-index").value);
  if (!ix) return;
  const path = `/v1/indexes/${encodeURIComponent(ix.name)}/search`;
  const body = searchBody($("#s-query").value, Number($("#s-k").value), $("#s-precision").value,
                          Number($("#s-dimensions").value), readFilter($("#s-filters")), ix);
  const pane = $("#s-out");
  pane.setAttribute("aria-busy", "true");
  try {
    const result = await api("POST", path, body);
    clearMessage();
    renderResults(pane, result, path, body);
    void pane.offsetHeight; // layout included in the page's own time
    announce(`${result.data.data[0].hits.length} hits for ${body.query}`);
    pane.dataset.roundTripMs = result.roundTrip.toFixed(3);
    pane.dataset.pageMs = (performance.now() - start - result.roundTrip).toFixed(3);
  } catch (error) {
    report(error, () => runSearch());
  } finally {
    pane.removeAttribute("aria-busy");
    pane.dataset.searches = String(Number(pane.dataset.searches || 0) + 1);
  }
}

// ---- compare ------------------------------------------------------------------------------------
function presets() {
  const list = [];
  const best = (ix) => ix.search.exact;
  for (const ix of state.indexes) {
    const full = ix.stats.dimensions;
    if (best(ix)) list.push([`${ix.name}: binary + rescore vs exact ${best(ix)}`, [ix.name, "binary+rescore", full], [ix.name, best(ix), full]]);
    list.push([`${ix.name}: binary vs binary + rescore`, [ix.name, "binary", full], [ix.name, "binary+rescore", full]]);
    const dims = ix.search.dimensions;
    if (dims.length > 1) list.push([`${ix.name}: ${full} vs ${dims[0]} dimensions`, [ix.name, "binary+rescore", full], [ix.name, "binary+rescore", dims[0]]]);
  }
  const byModel = (model) => state.indexes.find((ix) => ix.served_model === model);
  for (const m of state.models.filter((m) => m.split)) {
    const arms = Object.entries(m.split);
    if (arms.length >= 2 && byModel(arms[0][0]) && byModel(arms[1][0])) {
      const [a, b] = [byModel(arms[0][0]), byModel(arms[1][0])];
      list.push([`A/B split ${m.id}: ${arms[0][0]} (${arms[0][1]}) vs ${arms[1][0]} (${arms[1][1]})`,
        [a.name, "binary+rescore", a.stats.dimensions], [b.name, "binary+rescore", b.stats.dimensions]]);
    }
  }
  for (let i = 0; i < state.indexes.length; i++) {
    for (let j = i + 1; j < state.indexes.length; j++) {
      const [a, b] = [state.indexes[i], state.indexes[j]];
      if (a.served_model !== b.served_model) {
        list.push([`models: ${a.name} (${a.served_model}) vs ${b.name} (${b.served_model})`,
          [a.name, "binary+rescore", a.stats.dimensions], [b.name, "binary+rescore", b.stats.dimensions]]);
      }
    }
  }
  state.presets = list;
  options($("#c-preset"), [["", "Custom"], ...list.map(([label], i) => [String(i), label])], "");
}

function applyPreset() {
  const preset = state.presets[Number($("#c-preset").value)];
  if (!$("#c-preset").value || !preset) return;
  for (const [side, [index, precision, dims]] of [["a", preset[1]], ["b", preset[2]]]) {
    $(`#c-${side}-index`).value = index;
    indexChanged(`c-${side}`);
    $(`#c-${side}-precision`).value = precision;
    $(`#c-${side}-dimensions`).value = String(dims);
  }
}

const idsOf = (result) => result.data.data[0].hits.map((h) => h.id);
const share = (ids, reference) => (reference.length ? ids.filter((id) => reference.includes(id)).length / reference.length : 1);

async function runCompare(event) {
  if (event) event.preventDefault();
  const query = $("#c-query").value, k = Number($("#c-k").value), filter = readFilter($("#c-filters"));
  if (!indexNamed($("#c-a-index").value) || !indexNamed($("#c-b-index").value)) return;
  const sides = ["a", "b"].map((side) => {
    const ix = indexNamed($(`#c-${side}-index`).value);
    const body = searchBody(query, k, $(`#c-${side}-precision`).value, Number($(`#c-${side}-dimensions`).value), filter, ix);
    return { side, ix, body, path: `/v1/indexes/${encodeURIComponent(ix.name)}/search` };
  });
  // recall is measured against exact search at the index's best stored precision and full dimensions
  const exactOf = {};
  for (const { ix } of sides) {
    if (ix.search.exact && !(ix.name in exactOf)) {
      const body = searchBody(query, k, ix.search.exact, ix.stats.dimensions, filter, ix);
      exactOf[ix.name] = api("POST", `/v1/indexes/${encodeURIComponent(ix.name)}/search`, body);
    }
  }
  let results, exact;
  try {
    results = await Promise.all(sides.map((s) => api("POST", s.path, s.body)));
    exact = Object.fromEntries(await Promise.all(Object.entries(exactOf).map(async ([name, p]) => [name, await p])));
  } catch (error) {
    report(error, () => runCompare());
    return;
  }
  clearMessage();
  const [idsA, idsB] = results.map(idsOf);
  const both = idsA.filter((id) => idsB.includes(id));
  const overlap = Math.max(idsA.length, idsB.length) ? both.length / Math.max(idsA.length, idsB.length) : 1;
  const summary = [el("div", { id: "c-overlap" }, `overlap@${k}: `, el("strong", { text: overlap.toFixed(2) }),
    ` (${both.length} of ${Math.max(idsA.length, idsB.length)} ids in both)`)];
  sides.forEach(({ side, ix }, i) => {
    const reference = exact[ix.name];
    const text = reference ? share(idsOf(results[i]), idsOf(reference)).toFixed(2) : "n/a";
    const against = reference ? `exact ${ix.search.exact} search at ${ix.stats.dimensions} dims` : "no exact search on this backend";
    summary.push(el("div", { id: `c-recall-${side}` }, `${side.toUpperCase()} recall@${k}: `, el("strong", { text }), ` vs ${against}`));
  });
  $("#c-summary").replaceChildren(...summary);
  announce($("#c-summary").textContent);
  sides.forEach(({ side, ix, body, path }, i) => {
    const title = `${side.toUpperCase()}: ${ix.name} · ${PRECISION_LABEL[body.precision]} · ${body.dimensions} dims`;
    const other = i ? idsA : idsB, otherName = i ? "A" : "B";
    renderResults($(`#c-out-${side}`), results[i], path, body, title,
                  (hit) => [other.includes(hit.id) ? `${otherName} #${other.indexOf(hit.id) + 1}` : `not in ${otherName}`]);
    $$(".hit", $(`#c-out-${side}`)).forEach((item) => item.classList.toggle("both", both.includes(item.dataset.id)));
  });
}

// ---- embed --------------------------------------------------------------------------------------
function decode(embedding, kind) {
  if (kind === "float") return Float32Array.from(embedding);
  const bytes = Uint8Array.from(atob(embedding), (c) => c.charCodeAt(0));
  return kind === "int8" ? new Int8Array(bytes.buffer) : bytes;
}

function similarity(a, b, kind, dims) {
  if (kind === "binary") {
    let distance = 0;
    for (let i = 0; i < a.length; i++) { let x = a[i] ^ b[i]; while (x) { distance += x & 1; x >>= 1; } }
    return 1 - (2 * distance) / dims;
  }
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

const bits = (bytes, n) => Array.from(bytes.slice(0, Math.ceil(n / 8)), (b) => b.toString(2).padStart(8, "0")).join("").slice(0, n);

async function runEmbed(event) {
  if (event) event.preventDefault();
  const texts = $("#e-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const model = $("#e-model").value, dimensions = Number($("#e-dimensions").value);
  const contextual = $('input[name="mode"]:checked').value === "contextual";
  const path = contextual ? "/v1/contextualizedembeddings" : "/v1/embeddings";
  const formats = { float: "float", int8: "base64_int8", binary: "base64_binary" };
  let vectors;
  try {
    const answers = await Promise.all(Object.values(formats).map((encoding_format) =>
      api("POST", path, { model, dimensions, encoding_format, input: contextual ? [texts] : texts })));
    vectors = Object.fromEntries(Object.keys(formats).map((kind, i) => {
      const rows = contextual ? answers[i].data.data[0].data : answers[i].data.data;
      return [kind, rows.map((row) => decode(row.embedding, kind))];
    }));
  } catch (error) {
    report(error, () => runEmbed());
    return;
  }
  clearMessage();
  const table = el("table", { class: "vectors" }, el("caption", { text: `${texts.length} ${contextual ? "chunks of one document (late chunking)" : "texts"} · ${dimensions} dims · model ${model}` }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: "text" }),
      el("th", { scope: "col", text: `float32 · ${4 * dimensions} B/vector` }),
      el("th", { scope: "col", text: `int8 · ${dimensions} B/vector` }),
      el("th", { scope: "col", text: `binary · ${dimensions / 8} B/vector` }))),
    el("tbody", {}, texts.map((text, i) => el("tr", {}, el("th", { scope: "row", text: String(i + 1) }),
      el("td", { class: "text-cell", text }),
      el("td", { class: "vec", "data-kind": "float", text: Array.from(vectors.float[i].slice(0, 4), (v) => v.toFixed(3)).join(" ") + " …" }),
      el("td", { class: "vec", "data-kind": "int8", text: Array.from(vectors.int8[i].slice(0, 6)).join(" ") + " …" }),
      el("td", { class: "vec", "data-kind": "binary", text: bits(vectors.binary[i], 16) + " …" })))));
  const select = el("select", { id: "e-heat-precision" }, ...["float", "int8", "binary"].map((p) => el("option", { value: p, text: p })));
  const heat = el("div", { class: "table-wrap", id: "e-heat" });
  const draw = () => heat.replaceChildren(heatMap(vectors[select.value], select.value, dimensions));
  select.addEventListener("change", draw);
  draw();
  announce(`${texts.length} vectors at ${dimensions} dimensions`);
  $("#e-out").replaceChildren(el("div", { class: "table-wrap" }, table),
    el("div", { class: "field heat-select" }, el("label", { for: "e-heat-precision", text: "Similarity at" }), select), heat);
}

function heatMap(rows, kind, dims) {
  const n = Math.min(rows.length, 32);
  const head = el("tr", {}, el("th", { scope: "col", text: "" }), Array.from({ length: n }, (_, j) => el("th", { scope: "col", text: `#${j + 1}` })));
  const body = Array.from({ length: n }, (_, i) => el("tr", {}, el("th", { scope: "row", text: `#${i + 1}` }),
    Array.from({ length: n }, (_, j) => {
      const s = similarity(rows[i], rows[j], kind, dims);
      const cell = el("td", { text: s.toFixed(2), "data-i": i, "data-j": j, title: `#${i + 1} · #${j + 1}: ${s.toFixed(4)}` });
      const t = Math.max(0, Math.min(1, (s + 1) / 2));
      cell.style.backgroundColor = `hsl(212, 75%, ${Math.round(97 - 55 * t)}%)`;
      cell.style.color = t > 0.7 ? "#fff" : "";
      return cell;
    })));
  const caption = `Similarity heat map (${kind === "binary" ? "1 − 2·Hamming/dims" : "cosine"} of the ${kind} vectors)` +
    (rows.length > n ? `; the first ${n} of ${rows.length}` : "");
  return el("table", { class: "heat" }, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, body));
}

// ---- reports (server-rendered HTML; images fetched with the key) --------------------------------
async function loadReports() {
  const out = $("#r-out");
  if (!out || out.dataset.loaded) return;
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  try {
    const response = await fetch("/ui/reports", { headers });
    if (!response.ok) {
      const error = (await response.json()).error;
      throw new ApiError(response.status, error.code, error.message, response.headers.get("Retry-After"));
    }
    out.innerHTML = await response.text(); // rendered and escaped by the server
    out.dataset.loaded = "true";
    for (const img of $$("img[data-src]", out)) {
      const image = await fetch(img.dataset.src, { headers });
      if (image.ok) img.src = URL.createObjectURL(await image.blob());
    }
  } catch (error) {
    report(error, loadReports);
  }
}

// ---- start --------------------------------------------------------------------------------------
function start() {
  setUpTabs();
  for (const fieldset of $$(".filters")) {
    addFilterRow(fieldset);
    $(".add-filter", fieldset).addEventListener("click", () => $(".filter-key", addFilterRow(fieldset)).focus());
  }
  $("#search-form").addEventListener("submit", runSearch);
  $("#compare-form").addEventListener("submit", runCompare);
  $("#embed-form").addEventListener("submit", runEmbed);
  $("#s-index").addEventListener("change", () => indexChanged("s"));
  $("#c-a-index").addEventListener("change", () => indexChanged("c-a"));
  $("#c-b-index").addEventListener("change", () => indexChanged("c-b"));
  $("#c-preset").addEventListener("change", applyPreset);
  $("#e-model").addEventListener("change", modelChanged);
  $("#message-retry").addEventListener("click", () => { const retry = state.retry; clearMessage(); if (retry) retry(); });
  const keyForm = $("#key-form");
  if (keyForm) {
    $("#api-key").value = state.key;
    keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      state.key = $("#api-key").value.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      const reports = $("#r-out");
      if (reports) delete reports.dataset.loaded;
      loadCatalog();
    });
  }
  if (document.body.dataset.auth === "required" && !state.key) {
    showMessage("This server needs an API key. Enter it above.");
    $("#api-key").focus();
    return;
  }
  loadCatalog();
}

document.addEventListener("DOMContentLoaded", start);
