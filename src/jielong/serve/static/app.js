// jielong's web chat: plain JavaScript, no build step, no outside resources.
//
// It speaks the /api routes of jielong.serve (see src/jielong/serve/chat_routes.py):
// conversations kept on the server, replies streamed as server-sent events over a POST,
// every message a node of a tree (regenerating or editing adds a sibling), ratings, and the
// arena: two anonymous models answer one question side by side, the user votes, then sees
// who they were (src/jielong/serve/arena_routes.py).
//
// Safety: text from the model or the user never goes through innerHTML. The Markdown
// renderer below builds DOM nodes and puts all text in with textContent / text nodes, so
// any HTML in a message is shown as the characters it is, and links are made only for
// http(s) URLs.
//
// The safety rails (src/jielong/serve/safety_rails.py) answer some messages themselves: a
// message the input rail blocked is answered by the policy (for self-harm: a caring reply with
// crisis lines), a reply the output rail stopped ends in the policy's message; both come with
// finish_reason "content_filter". Every message carries its rails' decisions ("safety"), and a
// "resources" decision its crisis card, which is drawn under the answer: its title, each
// line's name, number (a tel: link) and hours, and the emergency numbers, in the card's
// language; live from the stream's `safety` event, and after a reload from the conversation.

"use strict";

(() => {
  // ------------------------------------------------------------------ Markdown, safely

  const Markdown = (() => {
    const MAX_DEPTH = 6; // nested lists / quotes rendered as structure; deeper is text

    function el(tag, className, text) {
      const node = document.createElement(tag);
      if (className) node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    }

    /** The URL, normalised, when it is http or https; otherwise null. */
    function safeUrl(raw) {
      try {
        const url = new URL(raw);
        if (url.protocol === "http:" || url.protocol === "https:") return url.href;
      } catch (_) { /* not a URL */ }
      return null;
    }

    /** An <a> to `href` (a checked http(s) URL) showing `label` (Markdown) or `shown`. */
    function link(href, label, shown, parent) {
      const a = el("a");
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.referrerPolicy = "no-referrer";
      if (label === null) a.textContent = shown;
      else inline(label, a, true);
      parent.append(a);
    }

    // Inline patterns; at each point the earliest match wins, ties go to the first listed.
    const INLINE = [
      ["code", /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/],
      ["link", /\[([^\]\n]+)\]\(\s*<?([^()\s<>]+)>?\s*\)/],
      ["auto", /\bhttps?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_~]/],
      ["strong", /\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)/],
      ["em", /\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/],
      ["del", /~~(?=\S)([\s\S]*?\S)~~/],
    ];

    /** Text with its line breaks as <br>. */
    function text(s, parent) {
      const parts = s.split("\n");
      parts.forEach((part, i) => {
        if (i) parent.append(el("br"));
        if (part) parent.append(document.createTextNode(part));
      });
    }

    function inline(s, parent, inLink = false) {
      while (s) {
        let best = null;
        for (const [kind, re] of INLINE) {
          if (inLink && (kind === "link" || kind === "auto")) continue;
          const m = re.exec(s);
          if (m && (best === null || m.index < best.m.index)) best = { kind, m };
        }
        if (!best) {
          text(s, parent);
          return;
        }
        const { kind, m } = best;
        if (m.index) text(s.slice(0, m.index), parent);
        if (kind === "code") {
          let code = m[2].replace(/\n/g, " ");
          if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
          parent.append(el("code", null, code));
        } else if (kind === "link") {
          const url = safeUrl(m[2]);
          if (url) link(url, m[1], null, parent);
          else text(m[0], parent); // javascript:, data:, relative… shown as typed
        } else if (kind === "auto") {
          const url = safeUrl(m[0]);
          if (url) link(url, null, m[0], parent);
          else text(m[0], parent);
        } else {
          const node = el(kind);
          inline(m[1] !== undefined ? m[1] : m[2], node, inLink);
          parent.append(node);
        }
        s = s.slice(m.index + m[0].length);
      }
    }

    const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
    const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
    const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
    const QUOTE = /^ {0,3}> ?(.*)$/;
    const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
    const TABLE_SEP = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;
    const BLANK = /^\s*$/;

    function startsBlock(lines, i) {
      const line = lines[i];
      return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
        ITEM.test(line) || isTable(lines, i);
    }

    function isTable(lines, i) {
      return lines[i].includes("|") && i + 1 < lines.length && lines[i + 1].includes("-") &&
        TABLE_SEP.test(lines[i + 1]) && cells(lines[i]).length === cells(lines[i + 1]).length;
    }

    function cells(line) {
      let s = line.trim();
      if (s.startsWith("|")) s = s.slice(1);
      if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
      return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
    }

    function codeBlock(code, lang, closed) {
      const box = el("div", "code-block");
      const head = el("div", "code-head");
      head.append(el("span", "code-lang", lang || "code"));
      const copy = el("button", "copy-code", "Copy");
      copy.type = "button";
      copy.setAttribute("aria-label", "Copy code");
      head.append(copy);
      const pre = el("pre");
      const c = el("code", null, code);
      const cls = lang.replace(/[^\w+#.-]/g, "");
      if (cls) c.className = "language-" + cls;
      pre.append(c);
      if (!closed) box.classList.add("open"); // still being written
      box.append(head, pre);
      return box;
    }

    function blocks(lines, parent, depth) {
      let i = 0;
      while (i < lines.length) {
        const line = lines[i];
        let m;
        if (BLANK.test(line)) {
          i++;
        } else if ((m = FENCE.exec(line))) {
          const mark = m[1];
          const close = new RegExp("^ {0,3}" + (mark[0] === "`" ? "`" : "~") +
            "{" + mark.length + ",}[ \\t]*$");
          const body = [];
          i++;
          while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
          const closed = i < lines.length;
          i++;
          parent.append(codeBlock(body.join("\n"), m[2], closed));
        } else if ((m = HEADING.exec(line))) {
          const level = m[1].length;
          const h = el("h" + Math.min(6, level + 2), "md-h" + level);
          inline(m[2] || "", h);
          parent.append(h);
          i++;
        } else if (RULE.test(line)) {
          parent.append(el("hr"));
          i++;
        } else if (QUOTE.test(line) && depth < MAX_DEPTH) {
          const inner = [];
          while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
            inner.push(m[1]);
            i++;
          }
          const q = el("blockquote");
          blocks(inner, q, depth + 1);
          parent.append(q);
        } else if (ITEM.test(line) && depth < MAX_DEPTH) {
          i = list(lines, i, parent, depth);
        } else if (isTable(lines, i)) {
          i = table(lines, i, parent);
        } else {
          const para = [];
          while (i < lines.length && !BLANK.test(lines[i]) &&
                 (!para.length || !startsBlock(lines, i))) {
            para.push(lines[i].replace(/^ {0,3}/, ""));
            i++;
          }
          const p = el("p");
          inline(para.join("\n"), p);
          parent.append(p);
        }
      }
    }

    function list(lines, i, parent, depth) {
      const first = ITEM.exec(lines[i]);
      const ordered = /\d/.test(first[2]);
      const indent = first[1].length;
      const node = el(ordered ? "ol" : "ul");
      if (ordered) {
        const start = parseInt(first[2], 10);
        if (start !== 1) node.start = start;
      }
      let loose = false;
      const items = [];
      while (i < lines.length) {
        const m = ITEM.exec(lines[i]);
        if (!m || m[1].length > indent + 1 || m[1].length < indent ||
            /\d/.test(m[2]) !== ordered) break;
        const content = [m[3] || ""];
        const col = m[1].length + m[2].length + 1;
        i++;
        while (i < lines.length) {
          const line = lines[i];
          if (BLANK.test(line)) {
            // A blank line continues the item when more of it, or the next item, follows.
            let j = i;
            while (j < lines.length && BLANK.test(lines[j])) j++;
            const next = lines[j];
            if (next === undefined) { i = j; break; }
            const lead = next.match(/^ */)[0].length;
            const nextItem = ITEM.exec(next);
            if (lead >= Math.min(col, indent + 2)) {
              content.push("");
              i = j;
              continue;
            }
            if (nextItem && nextItem[1].length === indent && /\d/.test(nextItem[2]) === ordered) {
              loose = true;
              i = j;
            }
            break;
          }
          const lead = line.match(/^ */)[0].length;
          if (lead >= Math.min(col, indent + 2)) {
            content.push(line.slice(Math.min(lead, col)));
            i++;
          } else if (!startsBlock(lines, i)) {
            content.push(line.trim()); // a lazy continuation of the item's paragraph
            i++;
          } else {
            break;
          }
        }
        items.push(content);
      }
      for (const content of items) {
        const li = el("li");
        blocks(content, li, depth + 1);
        if (!loose && li.firstElementChild && li.firstElementChild.tagName === "P") {
          const p = li.firstElementChild; // a tight list: no paragraph box around the text
          p.replaceWith(...p.childNodes);
        }
        node.append(li);
      }
      parent.append(node);
      return i;
    }

    function table(lines, i, parent) {
      const head = cells(lines[i]);
      const aligns = cells(lines[i + 1]).map((c) =>
        c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" :
          c.startsWith(":") ? "left" : "");
      const wrap = el("div", "table-wrap");
      const t = el("table");
      const thead = el("thead");
      const tr = el("tr");
      head.forEach((c, k) => {
        const th = el("th");
        if (aligns[k]) th.classList.add("align-" + aligns[k]);
        inline(c, th);
        tr.append(th);
      });
      thead.append(tr);
      t.append(thead);
      const tbody = el("tbody");
      i += 2;
      while (i < lines.length && lines[i].includes("|") && !BLANK.test(lines[i])) {
        const row = el("tr");
        const cs = cells(lines[i]);
        head.forEach((_, k) => {
          const td = el("td");
          if (aligns[k]) td.classList.add("align-" + aligns[k]);
          inline(cs[k] || "", td);
          row.append(td);
        });
        tbody.append(row);
        i++;
      }
      t.append(tbody);
      wrap.append(t);
      parent.append(wrap);
      return i;
    }

    /** Markdown source → a DocumentFragment of safe nodes. */
    function render(source) {
      const frag = document.createDocumentFragment();
      const lines = String(source == null ? "" : source).replace(/\r\n?/g, "\n").split("\n");
      blocks(lines, frag, 0);
      return frag;
    }

    return { render, safeUrl };
  })();

  // ------------------------------------------------------------------ small helpers

  const $ = (sel, root = document) => root.querySelector(sel);
  const ROOT = ""; // the key of the first messages' "parent"
  const keyOf = (parentId) => parentId || ROOT;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
    return node;
  }

  // Line icons (24×24, drawn with the text colour), so no emoji or icon font is needed.
  const ICONS = {
    edit: "M4 20h4L18.5 9.5a2.1 2.1 0 0 0-4-4L4 16v4zM13.5 6.5l4 4",
    regenerate: "M20 12a8 8 0 1 1-2.4-5.7M20 4v5h-5",
    copy: "M9 9h11v11H9zM5 15H4V4h11v1",
    up: "M7 11v10H3V11h4zM7 11l4-8a3 3 0 0 1 3 3v3h5.6a2 2 0 0 1 2 2.4l-1.5 7.5a2 2 0 0 1-2 1.6H7",
    down: "M17 13V3h4v10h-4zM17 13l-4 8a3 3 0 0 1-3-3v-3H4.4a2 2 0 0 1-2-2.4l1.5-7.5a2 2 0 0 1 2-1.6H17",
    prev: "M15 5l-7 7 7 7",
    next: "M9 5l7 7-7 7",
    close: "M6 6l12 12M18 6L6 18",
    check: "M5 13l4 4L19 7",
    inspect: "M10.5 4a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M15.5 15.5L20 20",
  };

  function icon(name) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "i");
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", ICONS[name]);
    svg.append(path);
    return svg;
  }

  /** An icon-only button: the label is for screen readers and the tooltip. */
  function iconButton(cls, name, label, attrs = {}) {
    return el("button", { type: "button", class: cls + " icon", title: label,
      "aria-label": label, ...attrs }, icon(name));
  }

  class ApiError extends Error {}

  async function errorOf(res) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    return new ApiError(message);
  }

  // A server started with API keys asks for one on /api too: ask the user once, keep it.
  const KEY_ITEM = "jielong.apiKey";
  function storedKey() {
    try {
      return localStorage.getItem(KEY_ITEM) || "";
    } catch (_) {
      return "";
    }
  }
  function askKey() {
    const key = window.prompt("This server needs an API key (the one given to `jielong serve`):");
    if (!key || !key.trim()) return false;
    try {
      localStorage.setItem(KEY_ITEM, key.trim());
    } catch (_) { /* kept for this call only */ }
    return key.trim();
  }

  /** fetch, with the API key when there is one (asked for on a 401, then tried again). */
  async function call(path, init) {
    const go = (key) => {
      const headers = { ...init.headers };
      if (key) headers.Authorization = "Bearer " + key;
      return fetch(path, { ...init, headers });
    };
    const res = await go(storedKey());
    if (res.status !== 401) return res;
    const key = askKey();
    return key ? go(key) : res;
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await call(path, init);
    if (!res.ok) throw await errorOf(res);
    return res.json();
  }

  // ------------------------------------------------------------------ state

  const state = {
    info: null,
    list: [], // [{id, title, updated, created}]
    conv: null, // the open conversation (without its messages), or null for a new chat
    msgs: new Map(), // id → message
    kids: new Map(), // parent key → [child ids], oldest first
    sel: new Map(), // parent key → the chosen child's id (default: the newest)
    stream: null, // {controller, id (the assistant message being written), stopped}
    editing: null, // id of the message being edited
    feedback: null, // {id, value, reasons: Set, comment}
    thanked: null, // id of the message whose feedback was just saved
    saving: Promise.resolve(), // the last conversation PATCH
    opening: null, // id of the conversation being fetched
    arenaMode: false, // the composer asks the arena (two anonymous models) instead
    battle: null, // the open arena battle: {id, question, a, b (messages), vote, models}
    library: null, // GET /api/collections: {collections, default, uploads, max_upload_bytes, types}
    open: new Set(), // source cards opened: "messageId:n"
    openTools: new Set(), // replies whose tool calls are unfolded: message ids
    inspect: null, // the Look inside panel: {id, tab, reply, at, prefix, top, text, attn, layer, head, row, error}
  };

  const ui = {
    list: $("#conversations"),
    noList: $("#no-conversations"),
    messages: $("#messages"),
    scroller: $("#scroller"),
    empty: $("#empty"),
    input: $("#input"),
    send: $("#send"),
    stop: $("#stop"),
    status: $("#status"),
    title: $("#chat-title"),
    system: $("#system-prompt"),
    temperature: $("#temperature"),
    maxTokens: $("#max-tokens"),
    model: $("#model"),
    settings: $("#settings"),
    toggleSettings: $("#toggle-settings"),
    serverInfo: $("#server-info"),
    arenaToggle: $("#arena-toggle"),
    arenaHint: $("#arena-hint"),
    docs: $("#documents"),
    collection: $("#collection"),
    uploadButton: $("#upload-button"),
    uploadFile: $("#upload-file"),
    uploadHint: $("#upload-hint"),
    tools: $("#tools"),
    toolsField: $("#tools-field"),
    toolsHint: $("#tools-hint"),
  };
  const PLACEHOLDER = ui.input.placeholder;

  let statusTimer = 0;
  function showStatus(message, kind = "error") {
    ui.status.textContent = message;
    ui.status.className = "status " + kind;
    ui.status.hidden = false;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { ui.status.hidden = true; }, 10000);
  }
  function clearStatus() {
    ui.status.hidden = true;
  }

  // ------------------------------------------------------------------ the message tree

  function addMessage(m) {
    const known = state.msgs.get(m.id);
    if (known) {
      Object.assign(known, m);
      return known;
    }
    const msg = { ...m };
    state.msgs.set(msg.id, msg);
    const key = keyOf(msg.parent_id);
    if (!state.kids.has(key)) state.kids.set(key, []);
    state.kids.get(key).push(msg.id);
    return msg;
  }

  function select(m) {
    state.sel.set(keyOf(m.parent_id), m.id);
    saveSelection();
  }

  /** The shown branch: from the root, at each level the chosen child (or the newest). */
  function thread() {
    const out = [];
    let key = ROOT;
    for (let guard = 0; guard <= state.msgs.size; guard++) {
      const kids = state.kids.get(key);
      if (!kids || !kids.length) break;
      let id = state.sel.get(key);
      if (!kids.includes(id)) id = kids[kids.length - 1];
      out.push(state.msgs.get(id));
      key = id;
    }
    return out;
  }

  function selectionKey(id) {
    return "jielong.selection." + id;
  }

  function saveSelection() {
    if (!state.conv) return;
    try {
      localStorage.setItem(selectionKey(state.conv.id),
        JSON.stringify(Object.fromEntries(state.sel)));
    } catch (_) { /* storage may be off; the newest branch is shown then */ }
  }

  function loadSelection(id) {
    state.sel = new Map();
    try {
      const saved = JSON.parse(localStorage.getItem(selectionKey(id)) || "{}");
      for (const [k, v] of Object.entries(saved)) state.sel.set(k, v);
    } catch (_) { /* ignore */ }
  }

  // ------------------------------------------------------------------ rendering

  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  function renderContent(m, box) {
    box.replaceChildren();
    if (m.role === "assistant") {
      box.append(Markdown.render(m.content));
      linkMarkers(m, box);
    } else box.textContent = m.content;
    const writing = state.stream && state.stream.id === m.id;
    box.classList.toggle("streaming", Boolean(writing));
  }

  // ------------------------------------------------------------------ safety decisions

  const BLOCKING = ["refuse", "resources"];
  const CARD_TEXT = { // the card's own words, in its language (jielong.safety.resources)
    "zh-hant": { lines: "求助專線", call: "撥打", emergency: "緊急求助", site: "網站" },
    "zh-hans": { lines: "求助热线", call: "拨打", emergency: "紧急求助", site: "网站" },
    en: { lines: "Helplines", call: "Call", emergency: "Emergency", site: "Website" },
  };
  const CARD_LANG = { "zh-hant": "zh-Hant", "zh-hans": "zh-Hans", en: "en" };

  /** Keep the decision `d` (a `safety` event) with message `m`, once. */
  function addDecision(m, d) {
    const { type, message_id: _, reply, side, ...decision } = d;
    m.safety = m.safety || [];
    const same = (x) => x.rail === decision.rail && x.category === decision.category &&
      x.action === decision.action;
    if (!m.safety.some(same)) m.safety.push(decision);
  }

  function blockedOnInput(m) {
    return Boolean(m && (m.safety || []).some((d) => d.rail === "input" &&
      BLOCKING.includes(d.action)));
  }

  /** The crisis card of a list of decisions, or null. */
  function cardIn(decisions) {
    const d = (decisions || []).find((x) => x.card && typeof x.card === "object");
    return d ? d.card : null;
  }

  /** An answer's crisis card: its own decisions', else its question's. */
  function cardOf(m) {
    if (m.role !== "assistant") return null;
    const q = m.parent_id ? state.msgs.get(m.parent_id) : null;
    return cardIn(m.safety) || cardIn(q && q.safety);
  }

  /** A tel: link to `number` (only digits and + kept in the link). */
  function telLink(number, label) {
    const dial = String(number).replace(/[^0-9+]/g, "");
    return el("a", { class: "tel", href: "tel:" + dial, text: String(number),
      "aria-label": `${label} ${number}` });
  }

  /** The crisis card (jielong.safety.resources.resources_card) as a note under an answer. */
  function safetyCard(card) {
    const t = CARD_TEXT[card.language] || CARD_TEXT.en;
    const lines = el("ul", { class: "card-lines", "aria-label": t.lines });
    for (const line of card.lines || []) {
      const li = el("li", { class: "card-line" }, el("span", { class: "line-name", text: line.name }));
      if (line.number) li.append(" ", telLink(line.number, `${t.call} ${line.name}`));
      if (line.hours) li.append(" ", el("span", { class: "line-hours", text: line.hours }));
      const url = line.url ? Markdown.safeUrl(line.url) : null;
      if (url) {
        li.append(" ", el("a", { class: "line-url", href: url, target: "_blank",
          rel: "noopener noreferrer", referrerpolicy: "no-referrer", text: url,
          "aria-label": `${t.site}: ${line.name}` }));
      }
      lines.append(li);
    }
    const box = el("div", { class: "safety-card", role: "note", "aria-label": card.title || t.lines,
      lang: CARD_LANG[card.language] || null, "data-region": card.region || null },
    el("p", { class: "card-title", text: card.title || t.lines }), lines);
    const emergency = (card.emergency || []).filter((e) => e && e.number);
    if (emergency.length) {
      const p = el("p", { class: "card-emergency" }, el("span", { class: "card-label", text: t.emergency + ":" }));
      emergency.forEach((e, i) => {
        p.append(i ? " · " : " ", telLink(e.number, `${t.call} ${e.name}`));
        if (e.name) p.append(" ", el("span", { class: "line-name", text: e.name }));
      });
      box.append(p);
    }
    return box;
  }

  /** The note for a reply the rails answered or stopped (finish_reason content_filter). */
  function filteredNote(m) {
    const q = m.parent_id ? state.msgs.get(m.parent_id) : null;
    return blockedOnInput(q) ? "answered by the safety policy" : "stopped by the safety policy";
  }

  // ------------------------------------------------------------------ the documents' sources

  /** The passages a reply was given (`m.rag.sources`, numbered as in its prompt). */
  function sourcesOf(m) {
    return (m.rag && Array.isArray(m.rag.sources)) ? m.rag.sources : [];
  }

  function fileName(path) {
    return String(path || "").split(/[\\/]/).pop() || String(path || "");
  }

  /** Each [n] in the reply's text that names a passage given becomes a button to its card. */
  function linkMarkers(m, box) {
    const have = new Set(sourcesOf(m).map((x) => x.n));
    if (!have.size) return;
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT, {
      acceptNode: (n) => n.parentElement.closest("code, pre, a, button") ?
        NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
    });
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const parts = node.nodeValue.split(/(\[\d{1,3}\])/);
      if (parts.length < 2) continue;
      const out = parts.map((part) => {
        const hit = /^\[(\d{1,3})\]$/.exec(part);
        const n = hit ? Number(hit[1]) : 0;
        if (!have.has(n)) return document.createTextNode(part);
        return el("button", { type: "button", class: "cite", "data-n": String(n),
          "aria-label": `Source ${n}`, text: `[${n}]` });
      });
      node.replaceWith(...out);
    }
  }

  /** The cards of a reply's sources: file, page, heading and the quote (click: all of it). */
  function sourcesView(m) {
    const sources = sourcesOf(m);
    if (!m.rag) return null;
    if (!sources.length) {
      return el("p", { class: "sources-none", text: `Nothing in “${m.rag.collection}” was ` +
        "about this, so no model was asked. 文件中沒有相關內容。" });
    }
    const cited = new Set((m.rag.citations || []).map((c) => c.n));
    const list = el("ol", { class: "sources", "aria-label": `Sources from ${m.rag.collection}` });
    for (const x of sources) {
      const key = `${m.id}:${x.n}`;
      const open = state.open.has(key);
      const where = [x.page ? `p. ${x.page}` : null, x.heading || null].filter(Boolean);
      list.append(el("li", {},
        el("button", { type: "button", class: "source-card" + (cited.has(x.n) ? " cited" : "") +
            (open ? " open" : ""), "data-n": String(x.n), "aria-expanded": open ? "true" : "false",
          title: x.source },
        el("span", { class: "source-n", text: `[${x.n}]` }),
        el("span", { class: "source-file", text: fileName(x.source) }),
        where.length ? el("span", { class: "source-where", text: where.join(" · ") }) : null,
        el("span", { class: "source-quote", text: x.quote || "" }))));
    }
    return el("div", { class: "sources-box" },
      el("p", { class: "sources-title", text: cited.size ? "Sources · 出處" :
        "Sources given (none cited) · 提供的資料" }), list);
  }

  function toggleSource(m, n, open) {
    const key = `${m.id}:${n}`;
    const now = open === undefined ? !state.open.has(key) : open;
    if (now) state.open.add(key);
    else state.open.delete(key);
    const card = ui.messages.querySelector(
      `.message[data-id="${CSS.escape(m.id)}"] .source-card[data-n="${n}"]`);
    if (card) {
      card.classList.toggle("open", now);
      card.setAttribute("aria-expanded", now ? "true" : "false");
    }
    return card;
  }

  // ------------------------------------------------------------------ tool calls

  /** A call's arguments, indented when they are JSON (Chinese kept as it is), else as sent. */
  function argumentsText(raw) {
    try {
      return JSON.stringify(JSON.parse(raw), null, 1);
    } catch (_) {
      return String(raw ?? "");
    }
  }

  /** The tool calls a reply made (`m.tools`), folded under it: each one's name, arguments
   * and result, as text (never HTML). */
  function toolsView(m) {
    const calls = Array.isArray(m.tools) ? m.tools : [];
    if (!calls.length) return null;
    const list = el("ol", { class: "tool-calls" });
    for (const t of calls) {
      list.append(el("li", { class: "tool-call" + (t.error ? " error" : "") },
        el("span", { class: "tool-name", text: `${t.name}` }),
        el("pre", { class: "tool-args", "aria-label": "Arguments", text: argumentsText(t.arguments) }),
        el("pre", { class: "tool-result", "aria-label": "Result", text: `→ ${t.result ?? ""}` })));
    }
    const n = calls.length;
    const box = el("details", { class: "tools-box", open: state.openTools.has(m.id) },
      el("summary", { text: `${n} tool ${n === 1 ? "call" : "calls"} · 使用了工具` }), list);
    box.addEventListener("toggle", () => {
      if (box.open) state.openTools.add(m.id);
      else state.openTools.delete(m.id);
    });
    return box;
  }

  function metaText(m) {
    const bits = [];
    if (m.role === "assistant" && m.model) bits.push(m.model);
    if (m.origin === "edit") bits.push("edited");
    if (m.finish_reason === "content_filter") bits.push(filteredNote(m));
    else if (m.finish_reason === "stopped") bits.push("stopped");
    else if (m.finish_reason === "interrupted") bits.push("interrupted: the server stopped while writing it");
    else if (m.finish_reason === "length") bits.push("cut at max tokens");
    else if (m.finish_reason === "error") bits.push("error" + (m.error ? ": " + m.error : ""));
    return bits.join(" · ");
  }

  function siblingsView(m) {
    const kids = state.kids.get(keyOf(m.parent_id)) || [];
    if (kids.length < 2) return null;
    const at = kids.indexOf(m.id);
    const busy = Boolean(state.stream);
    return el("div", { class: "siblings", role: "group", "aria-label": "Versions" },
      iconButton("prev", "prev", "Previous version", { disabled: at <= 0 || busy }),
      el("span", { class: "count", text: `${at + 1}/${kids.length}`, "aria-live": "polite" }),
      iconButton("next", "next", "Next version", { disabled: at >= kids.length - 1 || busy }));
  }

  function feedbackView(m) {
    const f = state.feedback;
    const up = f.value > 0;
    const reasons = (state.info && state.info.reasons && state.info.reasons[up ? "up" : "down"]) || [];
    const chips = el("div", { class: "reasons", role: "group",
      "aria-label": up ? "What was good?" : "What went wrong?" });
    for (const r of reasons) {
      chips.append(el("button", { type: "button", class: "reason", "data-reason": r, text: r,
        "aria-pressed": f.reasons.has(r) ? "true" : "false" }));
    }
    const id = "comment-" + m.id;
    const comment = el("textarea", { class: "comment", id, rows: 2,
      placeholder: up ? "What was good? (optional)" : "What should it have said? (optional)" });
    comment.value = f.comment;
    return el("div", { class: "feedback", role: "group", "aria-label": "Feedback" },
      el("p", { class: "feedback-title", text: up ? "Thanks! What was good?" :
        "What went wrong? 哪裡不好？" }),
      chips,
      el("label", { class: "visually-hidden", for: id, text: "Comment" }),
      comment,
      el("div", { class: "feedback-actions" },
        el("button", { type: "button", class: "submit-feedback primary small", text: "Send feedback" }),
        el("button", { type: "button", class: "close-feedback ghost small", text: "Close" })));
  }

  function editView(m) {
    const id = "edit-" + m.id;
    const box = el("textarea", { class: "edit-box", id, rows: Math.min(16, Math.max(3,
      m.content.split("\n").length + 1)) });
    box.value = m.content;
    return el("div", { class: "editing" },
      el("label", { class: "visually-hidden", for: id,
        text: m.role === "user" ? "Edit your message" : "Edit the answer" }),
      box,
      el("div", { class: "edit-actions" },
        el("span", { class: "hint", text: m.role === "user" ?
          "Saving sends it again as a new branch." : "Saved as a new version of the answer." }),
        el("button", { type: "button", class: "cancel-edit ghost small", text: "Cancel" }),
        el("button", { type: "button", class: "save-edit primary small",
          text: m.role === "user" ? "Save & send" : "Save" })));
  }

  function messageView(m) {
    const mine = m.role === "user";
    const busy = Boolean(state.stream);
    const node = el("article", { class: `message ${m.role}`, "data-id": m.id,
      "aria-label": mine ? "You" : "Assistant" });
    const body = el("div", { class: "bubble" });
    const who = el("div", { class: "who" },
      el("span", { class: "name", text: mine ? "You" : "jielong" }),
      el("span", { class: "meta", text: metaText(m) }));
    body.append(who);
    if (state.editing === m.id) {
      body.append(editView(m));
    } else {
      const content = el("div", { class: "content" });
      renderContent(m, content);
      body.append(content);
      const card = cardOf(m);
      if (card) body.append(safetyCard(card));
      const sources = m.role === "assistant" ? sourcesView(m) : null;
      if (sources) body.append(sources);
      const tools = m.role === "assistant" ? toolsView(m) : null;
      if (tools) body.append(tools);
      if (state.inspect && state.inspect.id === m.id && !writingNow(m)) body.append(inspectView(m));
    }
    const actions = el("div", { class: "actions", role: "toolbar",
      "aria-label": mine ? "Message actions" : "Answer actions" });
    const sibs = siblingsView(m);
    if (sibs) actions.append(sibs);
    const writing = state.stream && state.stream.id === m.id;
    if (writing) node.setAttribute("aria-busy", "true"); // read out once written, not per word
    if (!writing && state.editing !== m.id) {
      actions.append(iconButton("edit", "edit", mine ? "Edit message" : "Edit answer",
        { disabled: busy }));
      if (!mine) {
        actions.append(
          iconButton("regenerate", "regenerate", "Regenerate", { disabled: busy }),
          iconButton("copy", "copy", "Copy answer"),
          iconButton("inspect", "inspect", "Look inside: the model's choices and attention",
            { disabled: busy, "aria-pressed": state.inspect && state.inspect.id === m.id ? "true" : "false" }));
        const value = m.rating ? m.rating.value : 0;
        actions.append(
          iconButton("thumb-up", "up", "Good answer",
            { "aria-pressed": value > 0 ? "true" : "false" }),
          iconButton("thumb-down", "down", "Bad answer",
            { "aria-pressed": value < 0 ? "true" : "false" }));
        if (state.thanked === m.id) {
          actions.append(el("span", { class: "thanks", role: "status", text: "Feedback saved · 已記錄" }));
        }
      }
    }
    body.append(actions);
    if (state.feedback && state.feedback.id === m.id) body.append(feedbackView(m));
    node.append(body);
    return node;
  }

  function renderThread({ stick = false } = {}) {
    const follow = stick || nearBottom();
    const shown = state.battle ? [] : thread();
    ui.messages.replaceChildren(...(state.battle ? [arenaView()] : shown.map(messageView)));
    ui.empty.hidden = shown.length > 0 || Boolean(state.battle);
    ui.title.textContent = (state.conv && state.conv.title) || "New chat";
    if (follow) scrollToBottom();
  }

  function updateMessage(m) {
    const node = ui.messages.querySelector(`.message[data-id="${CSS.escape(m.id)}"]`);
    if (!node) return;
    const follow = nearBottom();
    node.replaceWith(messageView(m));
    if (follow) scrollToBottom();
  }

  function updateContent(m) {
    const box = ui.messages.querySelector(`.message[data-id="${CSS.escape(m.id)}"] .content`);
    if (!box) return;
    const follow = nearBottom();
    renderContent(m, box);
    if (follow) scrollToBottom();
  }

  function renderList() {
    const current = state.conv && state.conv.id;
    ui.list.replaceChildren(...state.list.map((c) => {
      const title = c.title || "Untitled";
      const here = c.id === current;
      return el("li", { class: "conversation" + (here ? " current" : ""), "data-id": c.id },
        el("button", { type: "button", class: "title", text: title, title,
          "aria-current": here ? "page" : null }),
        iconButton("rename", "edit", `Rename “${title}”`),
        iconButton("delete", "close", `Delete “${title}”`));
    }));
    ui.noList.hidden = state.list.length > 0;
  }

  async function refreshList() {
    try {
      state.list = (await api("GET", "/api/conversations")).conversations;
      renderList();
    } catch (e) {
      showStatus("Could not load the conversations: " + e.message);
    }
  }

  function setBusy(busy) {
    ui.stop.hidden = !busy;
    ui.send.disabled = busy;
    document.body.classList.toggle("busy", busy);
  }

  // ------------------------------------------------------------------ settings

  function currentSettings() {
    const s = {};
    const t = parseFloat(ui.temperature.value);
    if (Number.isFinite(t)) s.temperature = t;
    const n = parseInt(ui.maxTokens.value, 10);
    if (Number.isFinite(n) && n > 0) s.max_tokens = n;
    if (ui.model.value) s.model = ui.model.value;
    if (!ui.toolsField.hidden) s.tools = ui.tools.checked; // explicit: a request's settings go over the stored ones
    if (!ui.docs.hidden) { // the collection, when it is not the server's default
      const pick = ui.collection.value;
      if (pick !== (state.library.default || "")) s.rag = pick || false;
    }
    return s;
  }

  function showSettings(conv) {
    const d = (state.info && state.info.defaults) || {};
    const s = (conv && conv.settings) || {};
    // An empty field is the server's default (shown greyed); only what is typed is sent.
    ui.system.value = (conv && conv.system_prompt) || "";
    ui.temperature.value = s.temperature ?? "";
    ui.maxTokens.value = s.max_tokens ?? "";
    ui.temperature.placeholder = d.temperature ?? "";
    ui.maxTokens.placeholder = d.max_tokens ?? "";
    const models = [...ui.model.options].map((o) => o.value);
    const model = s.model && models.includes(s.model) ? s.model : state.info && state.info.model;
    if (model) ui.model.value = model;
    ui.tools.checked = s.tools === true;
    if (state.library) {
      const names = [...ui.collection.options].map((o) => o.value);
      ui.collection.value = s.rag === false ? "" :
        (typeof s.rag === "string" && names.includes(s.rag) ? s.rag : state.library.default || "");
    }
  }

  // ------------------------------------------------------------------ documents

  function showLibrary(pick) {
    const lib = state.library;
    const now = pick !== undefined ? pick : ui.collection.value;
    ui.docs.hidden = !lib || (!lib.collections.length && !lib.uploads);
    if (ui.docs.hidden) return;
    ui.collection.replaceChildren(el("option", { value: "", text: "No documents" }),
      ...lib.collections.map((c) => el("option", { value: c.name,
        text: `${c.name} (${c.documents} ${c.documents === 1 ? "file" : "files"})` })));
    const names = lib.collections.map((c) => c.name);
    ui.collection.value = names.includes(now) || now === "" ? now : (lib.default || "");
    ui.uploadButton.hidden = !lib.uploads;
    ui.uploadHint.textContent = lib.uploads ? `Upload ${lib.types.join(", ")} into ` +
      "your own collection; answers then cite it." : "";
  }

  async function loadLibrary(pick) {
    try {
      state.library = await api("GET", "/api/collections");
    } catch (_) {
      state.library = null;
    }
    showLibrary(pick);
  }

  /** Upload a file into the chosen collection when it is the user's, else into "mine". */
  async function upload(file) {
    const lib = state.library;
    const chosen = lib.collections.find((c) => c.name === ui.collection.value);
    const name = chosen && chosen.writable ? chosen.name : "mine";
    if (file.size > lib.max_upload_bytes) {
      showStatus(`${file.name} is larger than this server takes (${lib.max_upload_bytes} bytes).`);
      return;
    }
    showStatus(`Indexing ${file.name}…`, "info");
    try {
      const res = await call(`/api/collections/${encodeURIComponent(name)}/documents?filename=` +
        encodeURIComponent(file.name), { method: "POST", body: file,
        headers: { "Content-Type": "application/octet-stream", Accept: "application/json" } });
      if (!res.ok) throw await errorOf(res);
      const done = await res.json();
      await loadLibrary(name);
      saveSettingsSoon();
      showStatus(`${done.file}: ${done.chunks} ${done.chunks === 1 ? "passage" : "passages"} ` +
        `indexed in “${name}”.`, "info");
    } catch (e) {
      showStatus("The upload failed: " + e.message);
    }
  }

  let saveTimer = 0;
  function saveSettingsSoon() {
    if (!state.conv) return;
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveSettings, 300);
  }

  function saveSettings() {
    clearTimeout(saveTimer);
    if (!state.conv) return state.saving;
    const conv = state.conv;
    const body = { system_prompt: ui.system.value, settings: currentSettings() };
    if (conv.system_prompt === body.system_prompt &&
        JSON.stringify(conv.settings || {}) === JSON.stringify(body.settings)) return state.saving;
    conv.system_prompt = body.system_prompt;
    conv.settings = body.settings;
    state.saving = state.saving
      .then(() => api("PATCH", `/api/conversations/${conv.id}`, body))
      .catch((e) => showStatus("Could not save the settings: " + e.message));
    return state.saving;
  }

  // ------------------------------------------------------------------ conversations

  function resetThread() {
    state.battle = null;
    state.msgs = new Map();
    state.kids = new Map();
    state.sel = new Map();
    state.editing = null;
    state.feedback = null;
    state.thanked = null;
    state.inspect = null;
  }

  function setHash(id) {
    const now = decodeURIComponent(location.hash.replace(/^#/, ""));
    if (now === (id || "")) return;
    history.pushState(null, "", id ? "#" + encodeURIComponent(id) : location.pathname + location.search);
  }

  function stopStream() {
    if (state.stream) {
      state.stream.stopped = true;
      state.stream.controller.abort();
    }
  }

  function newChat() {
    stopStream();
    state.opening = null;
    state.conv = null;
    resetThread();
    setHash(null);
    showSettings(null);
    renderThread();
    renderList();
    ui.input.focus();
  }

  async function openConversation(id) {
    if ((state.conv && state.conv.id === id) || state.opening === id) return;
    state.opening = id;
    stopStream();
    let conv;
    try {
      conv = await api("GET", `/api/conversations/${encodeURIComponent(id)}`);
    } catch (e) {
      if (state.opening === id) {
        state.opening = null;
        showStatus("Could not open the conversation: " + e.message);
        setHash(state.conv ? state.conv.id : null);
      }
      return;
    }
    if (state.opening !== id) return; // another one was asked for meanwhile
    state.opening = null;
    const { messages, ...rest } = conv;
    state.conv = rest;
    resetThread();
    loadSelection(id);
    for (const m of messages || []) addMessage(m);
    const battles = rest.battles || [];
    if (battles.length) state.battle = battleOf(battles[0]);
    setArenaMode(battles.length > 0);
    setHash(id);
    showSettings(rest);
    renderThread({ stick: true });
    renderList();
  }

  async function ensureConversation(firstText) {
    if (state.conv) {
      await saveSettings();
      return state.conv;
    }
    const flat = firstText.replace(/\s+/g, " ").trim();
    const title = flat.length > 48 ? flat.slice(0, 47) + "…" : flat;
    const conv = await api("POST", "/api/conversations",
      { title, system_prompt: ui.system.value, settings: currentSettings() });
    const { messages, ...rest } = conv;
    state.conv = rest;
    resetThread();
    setHash(rest.id);
    state.list = [{ id: rest.id, title: rest.title, updated: rest.updated, created: rest.created },
      ...state.list.filter((c) => c.id !== rest.id)];
    renderList();
    return state.conv;
  }

  // ------------------------------------------------------------------ streaming

  function onEvent(ev) {
    const s = state.stream;
    if (ev.side || ev.type === "battle") {
      onArenaEvent(ev);
    } else if (ev.type === "user") {
      select(addMessage(ev.message));
      renderThread({ stick: true });
    } else if (ev.type === "safety") {
      // a rail's decision: the card is drawn at once under the answer it concerns
      const m = state.msgs.get(ev.message_id);
      if (m) {
        addDecision(m, ev);
        renderThread();
      }
    } else if (ev.type === "tool") {
      // a call the reply made, with its result: folded under the answer as it is written
      const m = state.msgs.get(ev.message_id);
      if (m) {
        m.tools = [...(m.tools || []), ev.tool];
        updateMessage(m);
      }
    } else if (ev.type === "notice") {
      // e.g. the conversation outgrew the context: this reply reads it without its oldest turns
      showStatus(ev.message, "info");
    } else if (ev.type === "assistant") {
      const m = addMessage(ev.message);
      select(m);
      if (s) s.id = m.id;
      renderThread({ stick: true });
    } else if (ev.type === "delta") {
      const m = s && state.msgs.get(s.id);
      if (m) {
        m.content += ev.text;
        updateContent(m);
      }
    } else if (ev.type === "done") {
      const m = addMessage(ev.message);
      if (s && s.id === m.id) s.id = null;
      updateMessage(m);
    } else if (ev.type === "error") {
      const message = (ev.error && ev.error.message) || "the model failed";
      const m = s && state.msgs.get(s.id);
      if (m) {
        m.finish_reason = "error";
        m.error = message;
        s.id = null;
        updateMessage(m);
      }
      showStatus("The answer failed: " + message);
    }
  }

  function dispatch(block) {
    const data = block.split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (!data || data === "[DONE]") return;
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (_) {
      return;
    }
    onEvent(ev);
  }

  /** POST `body` to `path` and follow its event stream (or take its JSON answer). */
  async function streamPost(path, body, { arena = false } = {}) {
    const controller = new AbortController();
    const s = { controller, id: null, stopped: false, arena };
    state.stream = s;
    setBusy(true);
    renderThread();
    let ok = false;
    try {
      const res = await call(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!res.ok) throw await errorOf(res);
      const type = res.headers.get("content-type") || "";
      if (!type.includes("text/event-stream")) {
        const data = await res.json();
        if (data && data.message) {
          select(addMessage(data.message));
        }
        ok = true;
        return;
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let m;
        while ((m = /\r?\n\r?\n/.exec(buf))) {
          const block = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          dispatch(block);
        }
      }
      buf += decoder.decode();
      if (buf.trim()) dispatch(buf);
      ok = true;
    } catch (e) {
      if (e.name !== "AbortError" && !s.stopped) {
        showStatus(e instanceof ApiError ? e.message : "The connection failed: " + e.message);
      }
    } finally {
      const m = s.id && state.msgs.get(s.id);
      if (m) { // the reply never got its "done": stopped, or cut off
        m.finish_reason = s.stopped ? "stopped" : (m.finish_reason || "error");
        if (!s.stopped && !m.error) m.error = "the connection closed early";
      }
      if (state.stream === s) state.stream = null;
      setBusy(false);
      renderThread();
      const a = document.activeElement;
      if (!a || a === document.body || a === ui.stop || a === ui.send) ui.input.focus();
      refreshList();
    }
    return ok;
  }

  function requestOptions() {
    const settings = currentSettings();
    const out = { settings };
    if (settings.model) out.model = settings.model;
    return out;
  }

  async function send() {
    if (state.stream) return;
    const content = ui.input.value;
    if (!content.trim()) return;
    clearStatus();
    ui.input.value = "";
    autosize();
    if (state.arenaMode) {
      if (!(await askArena(content))) {
        ui.input.value = content; // nothing was asked: give the text back
        autosize();
      }
      return;
    }
    let conv;
    try {
      conv = await ensureConversation(content);
    } catch (e) {
      ui.input.value = content;
      autosize();
      showStatus("Could not start the conversation: " + e.message);
      return;
    }
    const last = thread().at(-1);
    const before = state.msgs.size;
    await streamPost(`/api/conversations/${conv.id}/messages`,
      { parent_id: last ? last.id : null, content, ...requestOptions() });
    if (state.msgs.size === before && !ui.input.value) {
      ui.input.value = content; // nothing was stored: give the text back
      autosize();
    }
  }

  // ------------------------------------------------------------------ actions on messages

  async function regenerate(m) {
    clearStatus();
    await saveSettings();
    await streamPost(`/api/messages/${m.id}/regenerate`, requestOptions());
  }

  async function saveEdit(m, content) {
    state.editing = null;
    if (content === m.content || !content.trim()) {
      renderThread();
      return;
    }
    clearStatus();
    await saveSettings();
    await streamPost(`/api/messages/${m.id}/edit`, { content, ...requestOptions() });
  }

  async function rate(m, value, reasons, comment) {
    const body = { value };
    if (reasons) body.reasons = reasons;
    if (comment) body.comment = comment;
    const out = await api("POST", `/api/messages/${m.id}/rating`, body);
    m.rating = out.rating || { value, reasons: reasons || [], comment: comment || "" };
    return m.rating;
  }

  async function onThumb(m, value) {
    const current = m.rating ? m.rating.value : 0;
    state.thanked = null;
    try {
      if (current === value) {
        await rate(m, 0);
        if (state.feedback && state.feedback.id === m.id) state.feedback = null;
      } else {
        await rate(m, value);
        state.feedback = { id: m.id, value, reasons: new Set(), comment: "" };
      }
    } catch (e) {
      showStatus("Could not save the rating: " + e.message);
    }
    updateMessage(m);
    const node = ui.messages.querySelector(`.message[data-id="${CSS.escape(m.id)}"]`);
    const first = node && (node.querySelector(".feedback .reason") || node.querySelector(".feedback .comment"));
    if (first) first.focus();
  }

  async function submitFeedback(m) {
    const f = state.feedback;
    if (!f || f.id !== m.id) return;
    try {
      await rate(m, f.value, [...f.reasons], f.comment.trim());
      state.feedback = null;
      state.thanked = m.id;
    } catch (e) {
      showStatus("Could not save the feedback: " + e.message);
    }
    updateMessage(m);
  }

  function switchSibling(m, step) {
    const kids = state.kids.get(keyOf(m.parent_id)) || [];
    const to = kids[kids.indexOf(m.id) + step];
    if (!to) return;
    state.sel.set(keyOf(m.parent_id), to);
    saveSelection();
    state.editing = null;
    state.feedback = null;
    renderThread();
    const node = ui.messages.querySelector(`.message[data-id="${CSS.escape(to)}"]`);
    const again = node && node.querySelector(step < 0 ? ".prev" : ".next");
    if (again && !again.disabled) again.focus();
    else if (node) (node.querySelector(step < 0 ? ".next" : ".prev") || node).focus();
  }

  async function copyText(s, button) {
    try {
      await navigator.clipboard.writeText(s);
      const was = [...button.childNodes];
      button.replaceChildren(button.classList.contains("icon") ? icon("check") : "Copied");
      setTimeout(() => { button.replaceChildren(...was); }, 1200);
    } catch (_) {
      showStatus("Copying is not allowed here; select the text instead.", "info");
    }
  }

  ui.messages.addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (!button || button.disabled) return;
    if (button.classList.contains("copy-code")) {
      const code = button.closest(".code-block").querySelector("code");
      copyText(code.textContent, button);
      return;
    }
    if (button.classList.contains("vote")) {
      castVote(button.dataset.winner);
      return;
    }
    const node = button.closest(".message");
    const m = node && state.msgs.get(node.dataset.id);
    if (!m) return;
    const is = (c) => button.classList.contains(c);
    if (is("source-card")) {
      toggleSource(m, button.dataset.n);
      return;
    }
    if (is("cite")) {
      const card = toggleSource(m, button.dataset.n, true);
      if (card) {
        card.scrollIntoView({ block: "nearest" });
        card.focus();
      }
      return;
    }
    if (is("prev")) switchSibling(m, -1);
    else if (is("next")) switchSibling(m, 1);
    else if (is("edit")) {
      state.editing = m.id;
      state.feedback = null;
      updateMessage(m);
      const box = ui.messages.querySelector(`.message[data-id="${CSS.escape(m.id)}"] .edit-box`);
      if (box) {
        box.focus();
        box.setSelectionRange(box.value.length, box.value.length);
      }
    } else if (is("cancel-edit")) {
      state.editing = null;
      updateMessage(m);
    } else if (is("save-edit")) {
      saveEdit(m, node.querySelector(".edit-box").value);
    } else if (is("regenerate")) regenerate(m);
    else if (is("inspect")) toggleInspect(m);
    else if (is("inspect-tab")) inspectTab(m, button.dataset.tab);
    else if (is("piece")) pickPiece(m, Number(button.dataset.i));
    else if (is("alt")) continueFrom(m, Number(button.dataset.j));
    else if (is("attn-show")) loadAttention(m, node.querySelector(".attn-text").value);
    else if (is("attn-row")) showRow(m, Number(button.dataset.row));
    else if (is("thumb-up")) onThumb(m, 1);
    else if (is("thumb-down")) onThumb(m, -1);
    else if (is("copy")) copyText(m.content, button);
    else if (is("reason") && state.feedback) {
      const r = button.dataset.reason;
      const on = !state.feedback.reasons.has(r);
      if (on) state.feedback.reasons.add(r);
      else state.feedback.reasons.delete(r);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    } else if (is("submit-feedback")) submitFeedback(m);
    else if (is("close-feedback")) {
      state.feedback = null;
      updateMessage(m);
    }
  });

  ui.messages.addEventListener("change", (e) => {
    const node = e.target.closest(".message");
    const m = node && state.msgs.get(node.dataset.id);
    if (m && e.target.classList.contains("attn-layer")) pickLayer(m, e.target.value);
    else if (m && e.target.classList.contains("attn-head")) pickHead(m, e.target.value);
  });

  ui.messages.addEventListener("mouseover", (e) => {
    const row = e.target.closest && e.target.closest("tr[data-row]");
    const node = row && row.closest(".message");
    const m = node && state.msgs.get(node.dataset.id);
    const i = state.inspect;
    if (m && i && i.id === m.id && i.row !== Number(row.dataset.row)) showRow(m, Number(row.dataset.row));
  });

  ui.messages.addEventListener("input", (e) => {
    if (e.target.classList.contains("comment") && state.feedback) {
      state.feedback.comment = e.target.value;
    }
  });

  ui.messages.addEventListener("keydown", (e) => {
    if (!e.target.classList.contains("edit-box")) return;
    const node = e.target.closest(".message");
    const m = node && state.msgs.get(node.dataset.id);
    if (!m) return;
    if (e.key === "Escape") {
      state.editing = null;
      updateMessage(m);
    } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !composing(e)) {
      e.preventDefault();
      saveEdit(m, e.target.value);
    }
  });


  // ------------------------------------------------------------------ look inside (jielong.serve.inspect_routes)

  const K = 10; // alternatives shown for a token

  function writingNow(m) {
    return Boolean(state.stream && state.stream.id === m.id);
  }

  /** A piece as it can be seen: a newline as ↵, an empty piece as ∅. */
  function pieceText(t) {
    return t === "" ? "∅" : t.replace(/\n/g, "↵").replace(/\t/g, "→");
  }

  function percent(p) {
    return p >= 0.1 ? (p * 100).toFixed(0) + "%" : p >= 0.001 ? (p * 100).toFixed(1) + "%" : "<0.1%";
  }

  async function inspectCall(path, body) {
    try {
      return await api("POST", path, body);
    } catch (e) {
      if (state.inspect) state.inspect.error = e.message;
      return null;
    }
  }

  function redraw(m) {
    const i = state.inspect;
    if (i && i.id === m.id) updateMessage(m);
  }

  async function toggleInspect(m) {
    if (state.inspect && state.inspect.id === m.id) {
      state.inspect = null;
      updateMessage(m);
      return;
    }
    const old = state.inspect && state.msgs.get(state.inspect.id);
    state.inspect = { id: m.id, tab: "next", reply: null, at: null, prefix: "", top: null,
      text: m.content, attn: null, layer: 0, head: "mean", row: null, error: null, loading: true };
    if (old) updateMessage(old);
    updateMessage(m);
    const out = await inspectCall("/api/inspect/next", { message_id: m.id, k: K });
    const i = state.inspect;
    if (!i || i.id !== m.id) return;
    i.loading = false;
    if (out) i.reply = out.reply;
    redraw(m);
  }

  async function pickPiece(m, at) {
    const i = state.inspect;
    if (!i || !i.reply) return;
    i.at = at;
    i.prefix = i.reply.slice(0, at).join("");
    i.top = null;
    i.error = null;
    redraw(m);
    const out = await inspectCall("/api/inspect/next", { message_id: m.id, prefix: i.prefix, k: K });
    if (state.inspect !== i || i.at !== at) return;
    if (out) i.top = out.top;
    redraw(m);
  }

  /** The alternative that is the piece the reply has there (the longest whose text begins it). */
  function chosenOf(piece, top) {
    let best = -1;
    top.forEach((t, j) => {
      if (t.whole && t.text && piece.startsWith(t.text) && (best < 0 || t.text.length > top[best].text.length)) best = j;
    });
    return best;
  }

  async function continueFrom(m, j) {
    const i = state.inspect;
    if (!i || !i.top || !i.top[j] || state.stream) return;
    const prefix = i.prefix + i.top[j].text;
    state.inspect = null;
    clearStatus();
    await saveSettings();
    await streamPost(`/api/messages/${m.id}/continue`, { prefix, ...requestOptions() });
  }

  function inspectTab(m, tab) {
    const i = state.inspect;
    if (!i) return;
    i.tab = tab;
    i.error = null;
    redraw(m);
    if (tab === "attention" && !i.attn) loadAttention(m, i.text);
  }

  async function loadAttention(m, text, layer) {
    const i = state.inspect;
    if (!i || !text.trim()) return;
    i.text = text;
    i.error = null;
    i.loading = true;
    redraw(m);
    const body = { text };
    if (layer !== undefined) body.layer = layer;
    const out = await inspectCall("/api/inspect/attention", body);
    if (state.inspect !== i) return;
    i.loading = false;
    if (out) {
      const keep = i.attn && i.attn.pieces.join("\u0000") === out.pieces.join("\u0000");
      if (keep) { // another layer of the same text: add its heads
        i.attn.weights = i.attn.weights.map((w, l) => w || out.weights[l]);
      } else {
        i.attn = out;
        i.row = out.summary.position;
        if (i.layer !== "rollout" && i.layer >= out.layers) i.layer = 0;
      }
    }
    redraw(m);
  }

  function pickLayer(m, value) {
    const i = state.inspect;
    if (!i || !i.attn) return;
    i.layer = value === "rollout" ? "rollout" : Number(value);
    if (i.layer !== "rollout" && i.head !== "mean" && !i.attn.weights[i.layer]) {
      loadAttention(m, i.text, i.layer);
      return;
    }
    redraw(m);
  }

  function pickHead(m, value) {
    const i = state.inspect;
    if (!i || !i.attn) return;
    i.head = value === "mean" ? "mean" : Number(value);
    if (i.layer !== "rollout" && i.head !== "mean" && !i.attn.weights[i.layer]) {
      loadAttention(m, i.text, i.layer);
      return;
    }
    redraw(m);
  }

  function showRow(m, row) {
    const i = state.inspect;
    if (!i || !i.attn) return;
    i.row = row;
    const node = ui.messages.querySelector(`.message[data-id="${CSS.escape(m.id)}"]`);
    const panel = node && node.querySelector(".attention-view");
    if (!panel) return;
    const matrix = shownMatrix(i);
    for (const tr of panel.querySelectorAll("tr[data-row]")) {
      tr.classList.toggle("current", Number(tr.dataset.row) === row);
    }
    const note = panel.querySelector(".attn-note");
    if (note && matrix) note.replaceChildren(...rowNote(i.attn.pieces, matrix[row], row));
  }

  /** The matrix shown: the rollout, a layer's head mean, or one head. */
  function shownMatrix(i) {
    const a = i.attn;
    if (!a) return null;
    if (i.layer === "rollout") return a.rollout;
    if (i.head === "mean") return a.mean[i.layer];
    const w = a.weights[i.layer];
    return w ? w[i.head] : null;
  }

  function rowNote(pieces, row, at) {
    const top = row.map((w, j) => [w, j]).filter(([, j]) => j <= at).sort((x, y) => y[0] - x[0]).slice(0, 3);
    return [el("span", { text: `「${pieceText(pieces[at])}」 looks most at ` }),
      ...top.map(([w, j]) => el("span", { class: "attn-top", text: `${pieceText(pieces[j])} ${w.toFixed(2)}` }))];
  }

  function nextView(m, i) {
    const box = el("div", { class: "next-view" });
    if (!i.reply) {
      box.append(el("p", { class: "hint", text: i.loading ? "Reading the reply…" : "" }));
      return box;
    }
    box.append(el("p", { class: "hint", text: "Click a token to see what else the model could have written there; " +
      "pick one and the model goes on from it. 點一個詞，看看模型的其他選擇。" }));
    const pieces = el("div", { class: "pieces", role: "group", "aria-label": "The reply's tokens" });
    i.reply.forEach((t, n) => pieces.append(el("button", { type: "button", class: "piece" + (n === i.at ? " current" : ""),
      "data-i": n, text: pieceText(t), "aria-pressed": n === i.at ? "true" : "false" })));
    box.append(pieces);
    if (i.at === null) return box;
    if (!i.top) {
      box.append(el("p", { class: "hint", text: "Asking the model…" }));
      return box;
    }
    const chosen = chosenOf(i.reply[i.at], i.top);
    const list = el("ol", { class: "alternatives", "aria-label": "The model's likeliest next tokens" });
    i.top.forEach((t, j) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(1, Math.round(t.prob * 100)) + "%";
      const label = t.whole ? `Continue with “${t.text}”` : "Not a whole character; cannot continue from it";
      list.append(el("li", {},
        el("button", { type: "button", class: "alt" + (j === chosen ? " chosen" : ""), "data-j": j,
          disabled: !t.whole || Boolean(state.stream), title: label, "aria-label": `${pieceText(t.text)} ${percent(t.prob)}. ${label}` },
        el("span", { class: "alt-text", text: pieceText(t.text) }),
        el("span", { class: "bar-track" }, bar),
        el("span", { class: "prob", text: percent(t.prob) }))));
    });
    box.append(list);
    if (chosen < 0) {
      box.append(el("p", { class: "hint", text: `The reply's 「${pieceText(i.reply[i.at])}」 is not among ` +
        `the ${i.top.length} likeliest here: it was sampled from the long tail. 不在前 ${i.top.length} 名。` }));
    }
    return box;
  }

  function attentionView(m, i) {
    const box = el("div", { class: "attention-view" });
    const id = "attn-text-" + m.id;
    const area = el("textarea", { class: "attn-text", id, rows: 2 });
    area.value = i.text;
    box.append(el("label", { for: id, class: "hint", text: "Text (at most 128 tokens) · 句子" }), area,
      el("button", { type: "button", class: "attn-show ghost small", text: "Show attention" }));
    const a = i.attn;
    if (!a) {
      if (i.loading) box.append(el("p", { class: "hint", text: "Reading the attention…" }));
      return box;
    }
    const layer = el("select", { class: "attn-layer", "aria-label": "Layer" },
      ...Array.from({ length: a.layers }, (_, l) => el("option", { value: String(l), text: `layer ${l}` })),
      el("option", { value: "rollout", text: "rollout (all layers)" }));
    layer.value = String(i.layer);
    const head = el("select", { class: "attn-head", "aria-label": "Head", disabled: i.layer === "rollout" },
      el("option", { value: "mean", text: "mean of heads" }),
      ...Array.from({ length: a.heads }, (_, h) => el("option", { value: String(h), text: `head ${h}` })));
    head.value = String(i.head);
    box.append(el("div", { class: "attn-controls" }, layer, head));
    const matrix = shownMatrix(i);
    if (!matrix) {
      box.append(el("p", { class: "hint", text: "Reading this layer…" }));
      return box;
    }
    const labels = a.pieces.map(pieceText);
    const table = el("table", { class: "heatmap" });
    table.append(el("thead", {}, el("tr", {}, el("th", {}),
      ...labels.map((t) => el("th", { class: "col", scope: "col", text: t })))));
    const tbody = el("tbody");
    matrix.forEach((row, r) => {
      const tr = el("tr", { "data-row": r, class: r === i.row ? "current" : null },
        el("th", { scope: "row" }, el("button", { type: "button", class: "attn-row", "data-row": r, text: labels[r],
          title: `Where 「${labels[r]}」 looks` })));
      row.forEach((w, c) => {
        const td = el("td", { title: `${labels[r]} → ${labels[c]}: ${w.toFixed(3)}` });
        td.style.backgroundColor = `rgba(15, 122, 98, ${Math.min(1, w).toFixed(3)})`;
        tr.append(td);
      });
      tbody.append(tr);
    });
    table.append(tbody);
    box.append(el("div", { class: "heatmap-wrap" }, table));
    const row = i.row !== null && i.row < matrix.length ? i.row : matrix.length - 1;
    box.append(el("p", { class: "attn-note", "aria-live": "polite" }, ...rowNote(a.pieces, matrix[row], row)));
    return box;
  }

  function inspectView(m) {
    const i = state.inspect;
    const tab = (name, label) => el("button", { type: "button", class: "inspect-tab" + (i.tab === name ? " current" : ""),
      "data-tab": name, role: "tab", "aria-selected": i.tab === name ? "true" : "false", text: label });
    const panel = el("section", { class: "inspect-panel", "aria-label": "Look inside" },
      el("div", { class: "inspect-tabs", role: "tablist" },
        tab("next", "Next token 接龍"), tab("attention", "Attention 注意力")));
    if (i.error) panel.append(el("p", { class: "inspect-error", role: "alert", text: i.error }));
    panel.append(i.tab === "next" ? nextView(m, i) : attentionView(m, i));
    return panel;
  }

  // ------------------------------------------------------------------ the arena

  const SIDES = ["a", "b"];
  const VOTES = [
    ["a", "A is better", "A 較好"],
    ["b", "B is better", "B 較好"],
    ["tie", "Tie", "平手"],
    ["both_bad", "Both are bad", "都不好"],
  ];

  /** The battle of a conversation's data, its messages taken from state.msgs. */
  function battleOf(b) {
    return { id: b.id, question: state.msgs.get(b.question_id), a: state.msgs.get(b.message_a),
      b: state.msgs.get(b.message_b), vote: b.vote, models: b.models };
  }

  function setArenaMode(on) {
    state.arenaMode = on;
    ui.arenaToggle.setAttribute("aria-pressed", on ? "true" : "false");
    document.body.classList.toggle("arena-mode", on);
    ui.arenaHint.hidden = !on;
    ui.model.disabled = on; // the arena draws the models
    ui.input.placeholder = on ? "Ask two anonymous models… 問兩個匿名模型" : PLACEHOLDER;
  }

  function answerDone(m) {
    return Boolean(m && m.finish_reason) && !(state.stream && state.stream.arena);
  }

  function paneView(side) {
    const b = state.battle;
    const m = b[side];
    const writing = Boolean(state.stream && state.stream.arena && !m.finish_reason);
    const name = b.models ? b.models[side] : null;
    const content = el("div", { class: "content" + (writing ? " streaming" : "") });
    content.append(Markdown.render(m.content));
    const notes = [];
    if (m.finish_reason === "content_filter") notes.push(filteredNote(m));
    else if (m.finish_reason === "length") notes.push("cut at max tokens");
    else if (m.finish_reason === "stopped") notes.push("stopped");
    else if (m.finish_reason === "interrupted") notes.push("interrupted: the server stopped");
    else if (m.finish_reason === "error") notes.push("error" + (m.error ? ": " + m.error : ""));
    return el("section", { class: "arena-pane", "data-side": side, "data-id": m.id,
      "aria-label": "Answer " + side.toUpperCase(), "aria-busy": writing ? "true" : null },
    el("div", { class: "pane-head" },
      el("span", { class: "pane-label", text: side.toUpperCase() }),
      el("span", { class: "pane-model" + (name ? " shown" : ""),
        text: name || "model hidden until you vote" })),
    content,
    cardIn(m.safety) ? safetyCard(cardIn(m.safety)) : null,
    el("div", { class: "meta", text: notes.join(" · ") }));
  }

  function arenaView() {
    const b = state.battle;
    const question = el("article", { class: "message user", "aria-label": "You" },
      el("div", { class: "bubble" },
        el("div", { class: "who" }, el("span", { class: "name", text: "You" })),
        el("div", { class: "content", text: b.question.content })));
    const blocked = blockedOnInput(b.question); // the policy answered: nothing to compare
    const ready = answerDone(b.a) && answerDone(b.b) && !blocked;
    const current = b.vote ? b.vote.winner : null;
    const buttons = VOTES.map(([winner, label, zh]) => el("button", { type: "button",
      class: "vote" + (winner === current ? " primary" : ""), "data-winner": winner,
      "aria-pressed": winner === current ? "true" : "false", disabled: !ready },
    label, " ", el("span", { class: "zh", lang: "zh-Hant", text: zh })));
    let said = ready ? "Which answer is better? 哪個回答比較好？" : "The two answers are being written…";
    if (blocked) said = "The safety policy answered this question, so there is nothing to vote on. 此問題由安全政策回答，無需投票。";
    if (b.vote && b.models) {
      const chose = VOTES.find(([w]) => w === current);
      said = `You voted “${chose ? chose[1] : current}”: A was ${b.models.a}, ` +
        `B was ${b.models.b}. You can change your vote.`;
    }
    const card = cardIn(b.question.safety);
    return el("div", { class: "arena-battle", "data-battle": b.id },
      question,
      el("div", { class: "arena" }, paneView("a"), paneView("b")),
      card ? safetyCard(card) : null,
      el("div", { class: "arena-vote", role: "group", "aria-label": "Your vote" }, ...buttons),
      el("p", { class: "arena-result" + (b.vote ? " voted" : ""), role: "status", text: said }));
  }

  function updatePane(side) {
    const node = ui.messages.querySelector(`.arena-pane[data-side="${side}"]`);
    if (!node) return;
    const follow = nearBottom();
    node.replaceWith(paneView(side));
    if (follow) scrollToBottom();
  }

  function onArenaEvent(ev) {
    if (ev.type === "battle") {
      const { messages, ...conv } = ev.conversation;
      state.conv = conv;
      resetThread();
      addMessage(ev.question);
      for (const side of SIDES) addMessage(ev.battle.answers[side]);
      state.battle = battleOf(ev.battle);
      setHash(conv.id);
      state.list = [{ id: conv.id, title: conv.title, updated: conv.updated, created: conv.created },
        ...state.list.filter((c) => c.id !== conv.id)];
      renderList();
      renderThread({ stick: true });
      return;
    }
    const b = state.battle;
    if (ev.type === "safety") {
      const about = state.msgs.get(ev.message_id);
      if (about) addDecision(about, ev);
      renderThread();
      return;
    }
    const m = b && b[ev.side];
    if (!m) return;
    if (ev.type === "delta") {
      m.content += ev.text;
    } else if (ev.type === "done") {
      Object.assign(m, ev.message);
    } else if (ev.type === "error") {
      m.finish_reason = "error";
      m.error = (ev.error && ev.error.message) || "the model failed";
      showStatus(`Answer ${ev.side.toUpperCase()} failed: ${m.error}`);
    }
    updatePane(ev.side);
  }

  /** Ask the arena; true when a battle started. */
  async function askArena(content) {
    stopStream();
    state.conv = null;
    resetThread();
    renderThread();
    await streamPost("/api/arena", { content, system_prompt: ui.system.value || null,
      settings: arenaSettings() }, { arena: true });
    const b = state.battle;
    if (!b) return false;
    for (const side of SIDES) { // an answer that never got its "done": stopped, or cut off
      if (!b[side].finish_reason) b[side].finish_reason = "stopped";
    }
    renderThread();
    return true;
  }

  function arenaSettings() {
    const { model, tools, ...rest } = currentSettings(); // the arena calls no tools
    return rest;
  }

  async function castVote(winner) {
    const b = state.battle;
    if (!b) return;
    try {
      const out = await api("POST", `/api/arena/${encodeURIComponent(b.id)}/vote`, { winner });
      b.vote = out.battle.vote;
      b.models = out.battle.models;
      for (const side of SIDES) b[side].model = b.models[side];
    } catch (e) {
      showStatus("Could not save the vote: " + e.message);
      return;
    }
    renderThread();
    const pressed = ui.messages.querySelector(`.vote[data-winner="${winner}"]`);
    if (pressed) pressed.focus();
  }

  ui.arenaToggle.addEventListener("click", () => {
    const on = !state.arenaMode;
    if (state.conv || state.battle) newChat();
    setArenaMode(on);
    renderThread();
    ui.input.focus();
  });

  // ------------------------------------------------------------------ the conversation list

  function startRename(li) {
    const c = state.list.find((x) => x.id === li.dataset.id);
    if (!c) return;
    const title = li.querySelector(".title");
    const box = el("input", { class: "rename-box", type: "text", value: c.title || "",
      "aria-label": "New title", maxlength: 200 });
    title.replaceWith(box);
    box.focus();
    box.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = box.value.trim();
      if (save && value && value !== c.title) {
        try {
          await api("PATCH", `/api/conversations/${c.id}`, { title: value });
          c.title = value;
          if (state.conv && state.conv.id === c.id) {
            state.conv.title = value;
            ui.title.textContent = value;
          }
        } catch (e) {
          showStatus("Could not rename: " + e.message);
        }
      }
      renderList();
      const again = ui.list.querySelector(`.conversation[data-id="${CSS.escape(c.id)}"] .rename`);
      if (again) again.focus();
    };
    box.addEventListener("keydown", (e) => {
      if (composing(e)) return;
      if (e.key === "Enter") {
        e.preventDefault();
        finish(true);
      } else if (e.key === "Escape") {
        e.preventDefault();
        finish(false);
      }
    });
    box.addEventListener("blur", () => finish(true));
  }

  async function remove(li) {
    const c = state.list.find((x) => x.id === li.dataset.id);
    if (!c) return;
    const hard = state.info && state.info.hard_delete;  // jielong serve --hard_delete
    const ask = hard ? `Delete “${c.title || "Untitled"}” permanently? 永久刪除這個對話？`
      : `Delete “${c.title || "Untitled"}”? 刪除這個對話？`;
    if (!window.confirm(ask)) return;
    try {
      await api("DELETE", `/api/conversations/${c.id}`);
    } catch (e) {
      showStatus("Could not delete: " + e.message);
      return;
    }
    try {
      localStorage.removeItem(selectionKey(c.id));
    } catch (_) { /* ignore */ }
    state.list = state.list.filter((x) => x.id !== c.id);
    if (state.conv && state.conv.id === c.id) newChat();
    else renderList();
  }

  ui.list.addEventListener("click", (e) => {
    const button = e.target.closest("button");
    const li = e.target.closest(".conversation");
    if (!button || !li) return;
    if (button.classList.contains("title")) openConversation(li.dataset.id);
    else if (button.classList.contains("rename")) startRename(li);
    else if (button.classList.contains("delete")) remove(li);
  });

  // ------------------------------------------------------------------ the composer

  let imeActive = false;
  function composing(e) {
    // While an input method (注音, 倉頡, 拼音…) is composing, Enter picks a candidate.
    return e.isComposing || e.keyCode === 229 || imeActive;
  }

  function autosize() {
    const box = ui.input;
    box.style.height = "auto";
    box.style.height = Math.min(box.scrollHeight, 240) + "px";
  }

  ui.input.addEventListener("compositionstart", () => { imeActive = true; });
  ui.input.addEventListener("compositionend", () => { imeActive = false; });
  ui.input.addEventListener("input", autosize);
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.stream) {
      stopStream();
      return;
    }
    if (e.key !== "Enter" || e.shiftKey || e.altKey || composing(e)) return;
    e.preventDefault();
    if (!state.stream) send();
  });
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  ui.stop.addEventListener("click", () => {
    stopStream();
    ui.input.focus();
  });
  $("#new-chat").addEventListener("click", newChat);
  $(".skip-link").addEventListener("click", (e) => {
    e.preventDefault(); // the hash is the conversation's id: leave it alone
    ui.input.focus();
  });

  ui.uploadButton.addEventListener("click", () => ui.uploadFile.click());
  ui.uploadFile.addEventListener("change", async () => {
    const file = ui.uploadFile.files[0];
    ui.uploadFile.value = "";
    if (file) await upload(file);
  });

  for (const field of [ui.system, ui.temperature, ui.maxTokens, ui.model, ui.collection, ui.tools]) {
    field.addEventListener("change", saveSettingsSoon);
  }

  // The settings panel: shown beside the chat on wide screens, over it on narrow ones.
  const narrow = window.matchMedia("(max-width: 980px)");
  function syncSettingsToggle() {
    const cls = document.body.classList;
    const shown = narrow.matches ? cls.contains("settings-open") : !cls.contains("settings-closed");
    ui.toggleSettings.setAttribute("aria-expanded", shown ? "true" : "false");
  }
  ui.toggleSettings.addEventListener("click", () => {
    document.body.classList.toggle(narrow.matches ? "settings-open" : "settings-closed");
    syncSettingsToggle();
  });
  narrow.addEventListener("change", syncSettingsToggle);
  syncSettingsToggle();
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && narrow.matches && document.body.classList.contains("settings-open")) {
      document.body.classList.remove("settings-open");
      syncSettingsToggle();
      ui.toggleSettings.focus();
    }
  });

  function fromHash() {
    const id = decodeURIComponent(location.hash.replace(/^#/, ""));
    if (id) openConversation(id);
    else if (state.conv) newChat();
  }
  window.addEventListener("popstate", fromHash); // back / forward, or a hash typed in

  // ------------------------------------------------------------------ start

  async function start() {
    try {
      state.info = await api("GET", "/api/info");
    } catch (e) {
      showStatus("This server does not offer the chat API (/api): " + e.message);
      state.info = { model: "", models: [], defaults: {}, reasons: { up: [], down: [] } };
    }
    const info = state.info;
    ui.model.replaceChildren(...(info.models || [info.model]).filter(Boolean).map((name) =>
      el("option", { value: name, text: name === info.model ? `${name} (base)` : name })));
    ui.serverInfo.textContent = info.model ? `Served: ${info.model}` : "";
    const two = (info.models || []).length >= 2;
    ui.arenaHint.textContent = two ?
      `Arena: two of the ${info.models.length} served models answer, anonymously, side by ` +
      "side. Vote for the better answer, then see who wrote which. 投票後揭曉模型。" :
      "The arena needs two models, and this server serves one. Serve a LoRA adapter beside " +
      "it: jielong serve --model DIR --adapter NAME=DIR";
    const tools = info.tools || [];
    ui.toolsField.hidden = !tools.length;
    ui.toolsHint.textContent = tools.length ? `The model may call ${tools.join(", ")}; ` +
      "the calls show folded under the answer. 模型可呼叫工具。" : "";
    await loadLibrary();
    showSettings(null);
    await refreshList();
    const id = decodeURIComponent(location.hash.replace(/^#/, ""));
    if (id) await openConversation(id);
    else renderThread();
    document.body.classList.add("ready");
    ui.input.focus();
  }

  window.jielong = { renderMarkdown: Markdown.render, safeUrl: Markdown.safeUrl, state };
  start();
})();
