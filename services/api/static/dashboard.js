/* skutrain dashboard behaviour: live updates from the events stream, the create form built from
   the config's JSON schema, and every write through the JSON API (same SQL as the CLI). */
"use strict";
(() => {
  const API = document.body.dataset.api;
  const PAGE = document.body.dataset.page;
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // -- API calls ---------------------------------------------------------------------------
  async function api(method, path, body) {
    const init = {method, credentials: "same-origin",
                  headers: {"Accept": "application/json", "X-Skutrain-Request": "1"}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try { response = await fetch(API + path, init); }
    catch (err) { return {ok: false, status: 0, data: {message: "the server cannot be reached: " + err.message}}; }
    let data = null;
    try { data = await response.json(); } catch (err) { data = {}; }
    if (response.status === 401) loginNeeded();
    return {ok: response.ok, status: response.status, data};
  }

  function loginNeeded() {
    const next = encodeURIComponent(location.pathname + location.search);
    notice(`This change needs the API token. <a href="/login?next=${next}" style="color:#fff;text-decoration:underline">Log in</a>`, true, true);
  }

  let noticeTimer = null;
  function notice(message, isError = false, html = false) {
    const box = $("#notice");
    if (html) box.innerHTML = message; else box.textContent = message;
    box.classList.toggle("error", isError);
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, isError ? 9000 : 4000);
  }

  const fmt = (v, digits = 3) => (v === null || v === undefined || !isFinite(v)) ? "–" : Number(v).toFixed(digits);

  // -- dialogs, cancel, resume, delete -----------------------------------------------------
  document.addEventListener("click", event => {
    const close = event.target.closest("[data-close]");
    if (close) { close.closest("dialog").close(); return; }
    const button = event.target.closest("[data-action]");
    if (!button) return;
    const runId = button.dataset.runId;
    if (button.dataset.action === "cancel") runAction(runId, "cancel", button);
    else if (button.dataset.action === "resume") runAction(runId, "resume", button);
    else if (button.dataset.action === "delete") openDelete(runId, button.dataset.name);
    else if (button.dataset.action === "delete-checkpoint") deleteCheckpoint(button);
  });

  async function deleteCheckpoint(button) {
    const id = button.dataset.checkpointId;
    if (!confirm(`Delete the checkpoint of epoch ${button.dataset.epoch} (its files and its row)?`)) return;
    let result = await api("DELETE", `/checkpoints/${id}`);
    if (result.status === 409 && confirm(`${result.data.message}\n\nForce: delete it together with those models?`)) {
      result = await api("DELETE", `/checkpoints/${id}?force=true`);
    }
    if (result.ok) { notice(`checkpoint of epoch ${button.dataset.epoch}: delete requested`); scheduleReload(); }
    else if (result.status !== 401 && result.status !== 409) notice(result.data.message || "delete failed", true);
  }

  async function runAction(runId, action, button) {
    button.disabled = true;
    const result = await api("POST", `/runs/${runId}/${action}`);
    button.disabled = false;
    if (result.ok) {
      notice(`run #${runId}: ${action} requested (now ${result.data.status})`);
      refreshRun(runId);
    } else if (result.status !== 401) {
      notice(`run #${runId}: ${result.data.message || "request failed"}`, true);
    }
  }

  const deleteDialog = $("#delete-dialog");
  async function openDelete(runId, name) {
    const d = deleteDialog;
    d.dataset.runId = runId;
    $(".delete-name", d).textContent = `#${runId} ${name || ""}`;
    $(".delete-error", d).hidden = true;
    $(".delete-force", d).checked = false;
    $(".delete-linked", d).hidden = true;
    $(".linked-list", d).textContent = "";
    d.showModal();
    const run = await api("GET", `/runs/${runId}`);
    if (run.ok) showLinked(run.data.linked_models || []);
  }

  function showLinked(models) {
    const d = deleteDialog;
    if (!models.length) return;
    const list = $(".linked-list", d);
    list.textContent = "";
    for (const m of models) {
      const li = document.createElement("li");
      li.textContent = `${m.name} (epoch ${m.epoch})`;
      list.appendChild(li);
    }
    $(".delete-linked", d).hidden = false;
    updateDeleteButton();
  }

  function updateDeleteButton() {
    const force = $(".delete-force", deleteDialog).checked;
    $(".delete-confirm", deleteDialog).textContent = force ? "Force delete" : "Delete";
  }

  if (deleteDialog) {
    $(".delete-force", deleteDialog).addEventListener("change", updateDeleteButton);
    $(".delete-confirm", deleteDialog).addEventListener("click", async () => {
      const d = deleteDialog, runId = d.dataset.runId;
      const force = $(".delete-force", d).checked;
      const result = await api("DELETE", `/runs/${runId}?force=${force}`);
      if (result.ok) {
        d.close();
        notice(`run #${runId} deleted`);
        if (PAGE === "run") location.href = "/";
        else removeRow(runId);
        return;
      }
      const error = $(".delete-error", d);
      error.textContent = result.data.message || `delete failed (${result.status})`;
      error.hidden = false;
      if (result.status === 409) {
        const again = await api("GET", `/runs/${runId}`);
        if (again.ok) showLinked(again.data.linked_models || []);
      }
    });
  }

  // -- the events stream -------------------------------------------------------------------
  // Every event type of the catalogue (services/common/events.py) except the progress ones
  // changes what a page shows from the database.
  const EVENT_TYPES = document.body.dataset.eventTypes.split(",");
  const PROGRESS_EVENTS = new Set(["batch.progress", "epoch.started", "epoch.completed", "data.prepared"]);
  const GONE_EVENTS = new Set(["run.delete_requested"]);
  const STATE_EVENTS = new Set(EVENT_TYPES.filter(t => !PROGRESS_EVENTS.has(t) && !GONE_EVENTS.has(t)));

  function follow(path, cursor, handler) {
    const url = `${API}${path}${cursor ? `?after=${encodeURIComponent(cursor)}` : ""}`;
    const source = new EventSource(url, {withCredentials: true});
    const live = $("#live-indicator");
    source.onopen = () => live && live.classList.add("on");
    source.onerror = () => live && live.classList.remove("on");
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, message => handler(type, JSON.parse(message.data)));
    }
    return source;
  }

  function setProgress(root, total, event) {
    const p = event.payload;
    const epochFill = $(".epoch-fill", root), batchFill = $(".batch-fill", root);
    if (event.type === "batch.progress") {
      const batchPct = 100 * p.batch / p.num_batches;
      const epochPct = 100 * Math.min((p.epoch - 1 + p.batch / p.num_batches) / total, 1);
      epochFill.style.width = epochPct.toFixed(1) + "%";
      epochFill.parentElement.setAttribute("aria-valuenow", Math.round(epochPct));
      batchFill.style.width = batchPct.toFixed(1) + "%";
      batchFill.parentElement.setAttribute("aria-valuenow", Math.round(batchPct));
      $(".batch-text", root).textContent = `${p.batch}/${p.num_batches}`;
      $(".epoch-text", root).textContent = `${p.epoch}/${total}`;
      if (p.loss && p.loss.total !== undefined) $(".loss", root).textContent = fmt(p.loss.total, 4);
    } else if (event.type === "epoch.completed") {
      const epochPct = 100 * Math.min(p.epoch / total, 1);
      epochFill.style.width = epochPct + "%";
      epochFill.parentElement.setAttribute("aria-valuenow", Math.round(epochPct));
      $(".epoch-text", root).textContent = `${p.epoch}/${total}`;
      if (p.loss) $(".loss", root).textContent = fmt(p.loss.total, 4);
      if (p.val) $(".r1", root).textContent = fmt(p.val.recall_at_1);
    }
  }

  // -- runs list ---------------------------------------------------------------------------
  const batchState = new Map();  // run id -> latest batch.progress event, re-applied after a refresh
  const pending = new Map();

  function refreshRun(runId) {
    if (PAGE === "run") { scheduleReload(); return; }
    if (PAGE !== "runs") return;
    clearTimeout(pending.get(runId));
    pending.set(runId, setTimeout(() => replaceRow(runId), 150));
  }

  async function replaceRow(runId) {
    const response = await fetch(`/ui/runs/${runId}/row`, {credentials: "same-origin"});
    if (response.status === 404) { removeRow(runId); return; }
    if (!response.ok) return;
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const row = template.content.firstElementChild;
    const filter = $("#runs").dataset.statusFilter;
    const old = $(`#run-${runId}`);
    if (filter && row.dataset.status !== filter) { if (old) old.remove(); return; }
    if (old) old.replaceWith(row);
    else {
      const body = $("#runs tbody");
      const next = $$(".run-row", body).find(r => Number(r.dataset.runId) < Number(runId));
      body.insertBefore(row, next || null);
    }
    const last = batchState.get(String(runId));
    if (last && !FINAL.has(row.dataset.status)) setProgress(row, Number(row.dataset.total), last);
    $("#no-runs").hidden = $$(".run-row").length > 0;
  }

  function removeRow(runId) {
    const row = $(`#run-${runId}`);
    if (row) row.remove();
    const empty = $("#no-runs");
    if (empty) empty.hidden = $$(".run-row").length > 0;
  }

  function initRuns() {
    const table = $("#runs");
    follow("/events", table.dataset.eventCursor, (type, event) => {
      const runId = String(event.run_id);
      if (GONE_EVENTS.has(type)) { removeRow(runId); return; }
      const row = $(`#run-${runId}`);
      if (type === "batch.progress" || type === "epoch.completed") {
        if (type === "batch.progress") batchState.set(runId, event);
        if (row) setProgress(row, Number(row.dataset.total), event);
      }
      if (STATE_EVENTS.has(type) || type === "epoch.completed" || !row) refreshRun(runId);
    });
    initCreateForm();
  }

  // -- create form, built from the config's JSON schema --------------------------------------
  const BASIC = ["model", "data_source", "image_config", "training.epochs"];
  let schema = null, defaults = null;

  function resolve(node) {
    if (node && node.$ref) node = schema.$defs[node.$ref.split("/").pop()];
    if (node && node.anyOf) {
      const other = node.anyOf.filter(n => n.type !== "null");
      if (other.length === 1) return {...resolve(other[0]), nullable: true, description: node.description,
                                      title: node.title, default: node.default};
    }
    if (node && node.allOf && node.allOf.length === 1) return resolve(node.allOf[0]);
    return node;
  }

  const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  function setPath(obj, path, value) {
    const keys = path.split(".");
    let o = obj;
    for (const k of keys.slice(0, -1)) o = (o[k] = o[k] || {});
    o[keys[keys.length - 1]] = value;
  }
  const label = key => key.replace(/_/g, " ");

  function fieldFor(path, node, parentEl) {
    node = resolve(node);
    const key = path.split(".").pop();
    const value = getPath(defaults, path);
    if (node.type === "object" && node.properties) {
      const fs = document.createElement("fieldset");
      fs.dataset.field = path;
      fs.innerHTML = `<legend>${label(key)}</legend><div class="fields"></div><p class="field-error" hidden></p>`;
      for (const [child, sub] of Object.entries(node.properties)) fieldFor(`${path}.${child}`, sub, $(".fields", fs));
      parentEl.appendChild(fs);
      return;
    }
    const wrap = document.createElement("div");
    wrap.className = "field";
    wrap.dataset.field = path;
    const id = "f-" + path.replace(/\./g, "-");
    let input;
    if (node.enum) {
      input = document.createElement("select");
      if (node.nullable) input.add(new Option("(none)", ""));
      for (const option of node.enum) input.add(new Option(option, option));
      input.value = value ?? "";
    } else if (node.type === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = !!value;
    } else if (node.type === "array" && resolve(node.items).enum) {
      input = document.createElement("div");
      input.className = "choices";
      for (const option of resolve(node.items).enum) {
        const l = document.createElement("label");
        l.className = "check";
        l.innerHTML = `<input type="checkbox" value="${option}"> ${option}`;
        $("input", l).checked = (value || []).includes(option);
        input.appendChild(l);
      }
    } else if (node.type === "integer" || node.type === "number") {
      input = document.createElement("input");
      input.type = "number";
      input.step = node.type === "integer" ? "1" : "any";
      if (node.minimum !== undefined) input.min = node.minimum;
      if (node.maximum !== undefined) input.max = node.maximum;
      input.value = value ?? "";
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.value = Array.isArray(value) ? value.join(", ") : (value ?? "");
      if (node.type === "array") input.placeholder = "comma-separated";
    }
    input.id = id;
    input.dataset.path = path;
    const title = document.createElement("label");
    title.htmlFor = id;
    title.textContent = label(key);
    wrap.append(title, input);
    if (node.description) {
      const help = document.createElement("p");
      help.className = "help";
      help.textContent = node.description;
      wrap.appendChild(help);
    }
    const error = document.createElement("p");
    error.className = "field-error";
    error.hidden = true;
    wrap.appendChild(error);
    wrap._schema = node;
    parentEl.appendChild(wrap);
  }

  function buildForm() {
    schema = JSON.parse($("#config-schema").textContent);
    defaults = JSON.parse($("#config-defaults").textContent);
    const basic = $("#basic-fields"), advanced = $("#advanced-fields");
    const basicFields = document.createElement("div");
    basicFields.className = "fields";
    basic.appendChild(basicFields);
    const advancedFields = document.createElement("div");
    advancedFields.className = "fields";
    for (const [key, node] of Object.entries(schema.properties)) {
      if (BASIC.includes(key)) {
        const target = resolve(node).type === "object" ? basic : basicFields;
        fieldFor(key, node, target);
      } else if (key === "training") {
        const training = resolve(node);
        fieldFor("training.epochs", training.properties.epochs, basicFields);
        const fs = document.createElement("fieldset");
        fs.dataset.field = "training";
        fs.innerHTML = `<legend>training</legend><div class="fields"></div><p class="field-error" hidden></p>`;
        for (const [child, sub] of Object.entries(training.properties)) {
          if (child !== "epochs") fieldFor(`training.${child}`, sub, $(".fields", fs));
        }
        advanced.appendChild(fs);
      } else if (resolve(node).type === "object") {
        fieldFor(key, node, advanced);
      } else {
        fieldFor(key, node, advancedFields);
      }
    }
    if (advancedFields.children.length) advanced.prepend(advancedFields);
  }

  function readField(wrap) {
    const node = wrap._schema, input = $("[data-path]", wrap) || $(".choices", wrap);
    if (node.type === "boolean") return {value: $("input", wrap).checked};
    if (node.type === "array" && resolve(node.items).enum) {
      const picked = $$("input:checked", wrap).map(i => i.value);
      if (node.minItems && picked.length < node.minItems) return {error: `pick at least ${node.minItems}`};
      return {value: picked};
    }
    const raw = input.value.trim();
    if (raw === "") {
      if (node.nullable) return {value: null};
      return {error: "required"};
    }
    if (node.enum) return {value: raw};
    if (node.type === "integer" || node.type === "number") {
      const n = Number(raw);
      if (!isFinite(n)) return {error: "must be a number"};
      if (node.type === "integer" && !Number.isInteger(n)) return {error: "must be a whole number"};
      if (node.minimum !== undefined && n < node.minimum) return {error: `must be ≥ ${node.minimum}`};
      if (node.maximum !== undefined && n > node.maximum) return {error: `must be ≤ ${node.maximum}`};
      if (node.exclusiveMinimum !== undefined && n <= node.exclusiveMinimum) return {error: `must be > ${node.exclusiveMinimum}`};
      if (node.exclusiveMaximum !== undefined && n >= node.exclusiveMaximum) return {error: `must be < ${node.exclusiveMaximum}`};
      return {value: n};
    }
    if (node.type === "array") {
      const items = raw.split(",").map(s => s.trim()).filter(Boolean);
      const itemType = resolve(node.items).type;
      if (itemType === "integer") {
        const nums = items.map(Number);
        if (nums.some(n => !Number.isInteger(n))) return {error: "whole numbers, comma-separated"};
        return {value: nums};
      }
      return {value: items};
    }
    return {value: raw};
  }

  function clearErrors(form) {
    $$(".field-error", form).forEach(e => { e.hidden = true; e.textContent = ""; });
    $$(".invalid", form).forEach(e => e.classList.remove("invalid"));
    $("#create-error").hidden = true;
  }

  function showFieldError(form, path, message) {
    let target = null;
    for (let p = path; p && !target; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
      target = $(`[data-field="${p}"]`, form);
    }
    if (!target) {
      const fields = $$("[data-field]", form).map(f => f.dataset.field).sort((a, b) => b.length - a.length);
      const named = fields.find(f => f.includes(".") && message.includes(f));
      target = named ? $(`[data-field="${named}"]`, form) : null;
    }
    if (!target) {
      const box = $("#create-error");
      box.textContent = (box.hidden ? "" : box.textContent + " ") + message;
      box.hidden = false;
      return;
    }
    target.classList.add("invalid");
    const error = $(":scope > .field-error", target);
    error.textContent = (error.hidden ? "" : error.textContent + "; ") + message;
    error.hidden = false;
    if (target.closest("details")) target.closest("details").open = true;
  }

  function showFirstError(form) {
    const invalid = $$(".invalid", form);
    if (invalid.length) {
      const box = $("#create-error");
      box.textContent = `${invalid.length} field${invalid.length > 1 ? "s need" : " needs"} attention (marked in red).` +
        (box.hidden ? "" : " " + box.textContent);
      box.hidden = false;
      invalid[0].scrollIntoView({block: "center"});
    }
  }

  function initCreateForm() {
    const dialog = $("#create-dialog"), form = $("#create-form");
    buildForm();
    $("#new-run").addEventListener("click", () => { clearErrors(form); dialog.showModal(); });
    form.addEventListener("submit", async event => {
      event.preventDefault();
      clearErrors(form);
      let valid = true;
      const name = $("#f-name").value.trim();
      if (!name) { showFieldError(form, "name", "give the run a name"); valid = false; }
      const config = {};
      for (const wrap of $$(".field", form)) {
        if (!wrap._schema) continue;
        const path = wrap.dataset.field, result = readField(wrap);
        if (result.error) { showFieldError(form, path, result.error); valid = false; continue; }
        if (JSON.stringify(result.value) !== JSON.stringify(getPath(defaults, path) ?? null)) {
          setPath(config, path, result.value);
        }
      }
      if (!valid) { showFirstError(form); return; }
      const submit = $("#create-submit");
      submit.disabled = true;
      const result = await api("POST", "/runs", {name, config});
      submit.disabled = false;
      if (result.ok) {
        dialog.close();
        form.reset();
        $("#basic-fields").textContent = "";
        $("#advanced-fields").textContent = "";
        buildForm();
        notice(`queued run #${result.data.id} ${result.data.name}`);
        refreshRun(String(result.data.id));
      } else if (result.status === 422 && result.data.errors) {
        for (const e of result.data.errors) showFieldError(form, e.field.replace(/^config\.?/, "") || "config", e.message);
        showFirstError(form);
      } else if (result.status !== 401) {
        showFieldError(form, "", result.data.message || `the server answered ${result.status}`);
      }
    });
  }

  // -- run detail --------------------------------------------------------------------------
  let reloadTimer = null;
  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => {
      const typing = document.activeElement && document.activeElement.closest(".register-form");
      if (typing && document.activeElement.value) { scheduleReload(); return; }
      location.reload();
    }, 400);
  }

  function seriesFrom(rows, pick) {
    const names = new Map();
    for (const row of rows) {
      for (const [name, value] of Object.entries(pick(row) || {})) {
        if (typeof value !== "number") continue;
        if (!names.has(name)) names.set(name, []);
        names.get(name).push([row.epoch, value]);
      }
    }
    return Array.from(names, ([name, points]) => ({name, points}));
  }

  async function drawHistory(runId) {
    const result = await api("GET", `/runs/${runId}/metrics-history`);
    if (!result.ok) return;
    const rows = Array.isArray(result.data) ? result.data : (result.data.epochs || []);
    $("#history-empty").hidden = rows.length > 0;
    $(".charts").hidden = rows.length === 0;
    const VAL = ["recall_at_1", "recall_at_5", "recall_at_10", "map"];
    SkuCharts.lineChart($("#chart-loss"), {series: seriesFrom(rows, r => ({...r.loss, "val loss": r.val_loss}))});
    SkuCharts.lineChart($("#chart-lr"), {series: seriesFrom(rows, r => r.lr), log: true});
    SkuCharts.lineChart($("#chart-val"), {series: seriesFrom(rows, r => Object.fromEntries(
      VAL.map(k => [k.replace("recall_at_", "R@").replace("map", "mAP"), (r.val || {})[k]])))});
  }

  function initRun() {
    const section = $("#run"), runId = section.dataset.runId;
    const total = Number(section.dataset.total);
    drawHistory(runId);
    follow(`/runs/${runId}/events`, section.dataset.eventCursor, (type, event) => {
      if (type === "batch.progress") setProgress(section, total, event);
      else if (type === "epoch.completed") { setProgress(section, total, event); drawHistory(runId); }
      else if (GONE_EVENTS.has(type)) location.href = "/";
      else if (STATE_EVENTS.has(type)) scheduleReload();
    });
    for (const form of $$(".register-form")) {
      form.addEventListener("submit", async event => {
        event.preventDefault();
        const error = $(".field-error", form);
        error.hidden = true;
        const name = form.elements.model_name.value.trim();
        if (!name) { error.textContent = "give the model a name"; error.hidden = false; return; }
        const result = await api("POST", `/checkpoints/${form.dataset.checkpointId}/register`, {name});
        if (result.ok) { notice(`registered model ${name}`); form.elements.model_name.value = ""; scheduleReload(); }
        else if (result.status !== 401) { error.textContent = result.data.message || "registration failed"; error.hidden = false; }
      });
    }
  }

  // -- models and comparison ---------------------------------------------------------------
  function initModels() {
    const button = $("#compare-selected");
    if (!button) return;
    const picked = () => $$(".compare-pick:checked").map(i => i.value);
    document.addEventListener("change", event => {
      if (!event.target.classList.contains("compare-pick")) return;
      const n = picked().length;
      button.disabled = n < 2 || n > 5;
      const hint = $("#compare-hint");
      if (hint) hint.textContent = n > 5 ? "Pick at most 5 models." : "Pick 2 to 5 models to compare them side by side.";
    });
    button.addEventListener("click", () => {
      location.href = "/models/compare?" + picked().map(id => `ids=${id}`).join("&");
    });
  }

  async function initCompare() {
    const ids = $("#compare").dataset.ids.split(",").filter(Boolean);
    const status = $("#compare-status");
    const result = await api("GET", "/models/compare?" + ids.map(id => `ids=${id}`).join("&"));
    if (!result.ok) { status.textContent = result.data.message || "comparison failed"; return; }
    const doc = result.data;
    status.textContent = doc.warnings.join(" ");
    status.hidden = !doc.warnings.length;
    renderCompareTable(doc, $("#compare-table"));
    const TEST = ["test.recall_at_1", "test.recall_at_5", "test.recall_at_10", "test.map"];
    const rows = TEST.map(name => doc.metrics.find(m => m.name === name)).filter(Boolean);
    SkuCharts.barChart($("#chart-compare"), {
      categories: rows.map(r => r.name.replace("test.", "").replace("recall_at_", "R@").replace("map", "mAP")),
      series: doc.models.map((m, i) => ({name: m.name, values: rows.map(r => r.values[i])}))});
    SkuCharts.lineChart($("#chart-compare-curves"), {series: doc.models.map(m => ({
      name: m.name, points: (doc.val_curves[String(m.id)] || []).map(c => [c.epoch, c.val_recall_at_1])}))});
    $("#compare-table").hidden = false;
    $$("#compare figure").forEach(f => { f.hidden = false; });
  }

  function renderCompareTable(doc, table) {
    const head = table.createTHead().insertRow();
    head.appendChild(document.createElement("th")).textContent = "metric";
    for (const m of doc.models) {
      const th = head.appendChild(document.createElement("th"));
      th.className = "num";
      const link = th.appendChild(document.createElement("a"));
      link.href = `/runs/${m.run_id}`;
      link.textContent = m.name;
      th.appendChild(document.createElement("div")).textContent = `run #${m.run_id}, epoch ${m.epoch}`;
      th.lastChild.className = "muted small";
    }
    const body = table.createTBody();
    for (const metric of doc.metrics) {
      const row = body.insertRow();
      row.dataset.metric = metric.name;
      row.appendChild(document.createElement("th")).textContent = metric.name;
      metric.values.forEach((value, i) => {
        const cell = row.insertCell();
        cell.className = "num";
        cell.textContent = metric.kind === "count" ? value : fmt(value);
        if (metric.best && metric.best.includes(doc.models[i].id)) {
          cell.classList.add("best-value");
          cell.title = "best of the compared models";
        }
      });
    }
    if (doc.omitted_metrics.length) {
      const note = document.createElement("caption");
      note.className = "muted small";
      note.textContent = `not in every model (left out): ${doc.omitted_metrics.join(", ")}`;
      table.appendChild(note);
    }
  }

  function initLogin() {
    const match = location.hash.match(/^#token=(.+)$/);
    if (!match) return;
    history.replaceState(null, "", location.pathname + location.search);
    $("#token").value = decodeURIComponent(match[1]);
    $("#login-form").submit();
  }

  const init = {runs: initRuns, run: initRun, models: initModels, compare: initCompare, login: initLogin}[PAGE];
  if (init) init();
})();
