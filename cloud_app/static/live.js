/* Live updates of the dashboard over Server-Sent Events (no page reload, no dependencies).
 *
 *   <tbody data-live-tasks="/api/v1/events">      rows [data-task-id] get state and progress
 *   <div data-task-stream="/api/v1/tasks/ID/events">  charts, events and per-detector progress
 */
(function () {
  "use strict";
  var ACTIVE = {QUEUED: 1, ACCEPTED: 1, IN_PROGRESS: 1};

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function text(el, value) { if (el) { el.textContent = value; } }
  function pct(v) { return (Math.round((v || 0) * 10) / 10).toFixed(1) + "%"; }
  function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "—"; }
  function ago(ts) {
    if (!ts) { return "never"; }
    var secs = Math.max(0, Math.floor(Date.now() / 1000 - ts));
    if (secs >= 86400) { return Math.floor(secs / 86400) + " d ago"; }
    if (secs >= 3600) { return Math.floor(secs / 3600) + " h ago"; }
    if (secs >= 60) { return Math.floor(secs / 60) + " min ago"; }
    return secs + " s ago";
  }
  function num(v, d) { return (v === null || v === undefined) ? "—" : Number(v).toFixed(d === undefined ? 4 : d); }

  function setBadge(el, state) {
    if (!el) { return; }
    el.className = "badge " + state;
    el.textContent = state;
    el.setAttribute("data-state", state);
  }

  function setBar(root, percent, state) {
    var bar = $(".bar", root);
    if (!bar) { return; }
    var span = $("span", bar);
    span.style.width = Math.max(0, Math.min(100, percent || 0)) + "%";
    bar.setAttribute("data-percent", String(percent || 0));
    bar.classList.toggle("done", state === "SUCCEEDED" || state === "ACTIVE");
    bar.classList.toggle("bad", /FAILED|REJECTED|TIMED_OUT|ROLLED_BACK/.test(state || ""));
    text($(".pct", root), pct(percent));
  }

  function indicator(el, on) { if (el) { el.classList.toggle("on", on); } }

  function open(url, handlers, dot) {
    var es = new EventSource(url);
    es.onopen = function () { indicator(dot, true); };
    es.onerror = function () { indicator(dot, false); };
    Object.keys(handlers).forEach(function (name) {
      es.addEventListener(name, function (ev) { handlers[name](JSON.parse(ev.data), es); });
    });
    return es;
  }

  /* ---- tasks list and fleet ------------------------------------------------------------- */
  function taskRow(tbody, t) {
    var row = $('[data-task-id="' + t.id + '"]', tbody);
    if (row || !tbody.hasAttribute("data-add-rows")) { return row; }
    row = document.createElement("tr");
    row.setAttribute("data-task-id", t.id);
    row.innerHTML = '<td><a></a></td><td></td><td></td><td></td><td><span class="badge"></span></td>' +
      '<td><div class="spread"><div class="bar" style="flex:1"><span></span></div><span class="pct"></span></div></td>' +
      "<td class=\"muted\"></td>";
    var cells = row.children;
    var a = $("a", cells[0]); a.href = "/tasks/" + encodeURIComponent(t.id); a.textContent = t.id;
    text(cells[1], t.kind); text(cells[2], t.line); text(cells[3], t.brand); text(cells[6], when(t.created_at));
    var empty = $(".empty-row", tbody); if (empty) { empty.remove(); }
    tbody.insertBefore(row, tbody.firstChild);
    return row;
  }

  function liveTasks(tbody) {
    open(tbody.getAttribute("data-live-tasks"), {
      task: function (t) {
        var row = taskRow(tbody, t);
        if (!row) { return; }
        setBadge($(".badge", row), t.state);
        setBar(row, t.percent, t.state);
      },
      node: function (n) {
        $all('[data-node-key="' + n.key + '"]').forEach(function (row) {
          var badge = $(".badge.node-state", row);
          setBadge(badge, n.online ? "online" : "offline");
          if (badge) { badge.classList.add("node-state"); }
          var seen = $(".last-seen", row);
          if (seen) { seen.textContent = ago(n.last_seen); seen.title = when(n.last_seen); seen.setAttribute("data-ts", n.last_seen || ""); }
          var models = $(".models", row);
          if (models && n.models) {
            models.textContent = "";
            Object.keys(n.models).sort().forEach(function (brand) {
              var m = n.models[brand], div = document.createElement("div");
              div.textContent = brand + ": v" + (m.version === null ? "?" : m.version) + " " + (m.sha256 || "").slice(0, 10);
              models.appendChild(div);
            });
          }
          var st = n.status || {};
          if (st.inspected !== undefined) { text($(".inspected", row), st.inspected); text($(".ng", row), st.ng); }
        });
      }
    }, $("#live-dot"));
  }

  /* ---- one task --------------------------------------------------------------------------- */
  function charts(root) {
    function make(id, series, opts) {
      var c = $("#" + id, root);
      return c ? new window.MiniChart(c, series, opts) : null;
    }
    return {
      batch: make("chart-batch", [{name: "accuracy", color: "#2f6fde"}, {name: "loss", color: "#d14343"}],
                  {xMin: 0, xMax: 100, xSuffix: "%"}),
      epoch: make("chart-epoch", [{name: "accuracy", color: "#2f6fde"}, {name: "loss", color: "#d14343"},
                                  {name: "val accuracy", color: "#1f9d55"}, {name: "val loss", color: "#c27c0e"}],
                  {xInteger: true})
    };
  }

  function taskStream(root) {
    var ch = charts(root), epochsSeen = {}, dot = $("#live-dot");
    var eventsBody = $("#task-events", root), metricsBody = $("#epoch-rows", root);
    open(root.getAttribute("data-task-stream"), {
      task: function (t) {
        setBadge($("#task-state", root), t.state);
        setBar($("#task-progress", root) || root, t.percent, t.state);
        text($("#task-reason", root), t.reason || "");
        var p = t.progress || {};
        if (p.type === "TrainingProgress") {
          text($("#task-epoch", root), p.epoch + " / " + p.epochs + (p.phase === "finetune" ? " (fine-tune)" : ""));
          text($("#task-batch", root), p.batch + " / " + p.batches);
          text($("#task-eta", root), p.eta_s === null || p.eta_s === undefined ? "—" : Math.round(p.eta_s) + " s");
        }
        (t.deployments || []).forEach(function (d) {
          var row = $('[data-detector="' + d.detector + '"]', root);
          if (!row) { return; }
          setBadge($(".badge", row), d.state);
          setBar(row, d.percent, d.state);
          text($(".reason", row), d.reason || "");
        });
        var cancel = $("#cancel-form", root);
        if (cancel && !ACTIVE[t.state]) { cancel.style.display = "none"; }
      },
      progress: function (p) {
        if (!ch.batch) { return; }
        var x = p.step;
        ch.batch.push(0, x, p.accuracy);
        ch.batch.push(1, x, p.loss);
      },
      epoch: function (m) {
        var key = m.phase + ":" + m.epoch;
        if (epochsSeen[key]) { return; }
        epochsSeen[key] = true;
        if (ch.epoch) {
          ch.epoch.push(0, m.step, m.accuracy); ch.epoch.push(1, m.step, m.loss);
          ch.epoch.push(2, m.step, m.val_accuracy); ch.epoch.push(3, m.step, m.val_loss);
        }
        if (metricsBody) {
          var empty = $(".empty-row", metricsBody); if (empty) { empty.remove(); }
          var tr = document.createElement("tr");
          [m.phase, m.epoch + " / " + m.epochs, num(m.accuracy), num(m.loss), num(m.val_accuracy), num(m.val_loss),
           num(m.duration_s, 1)].forEach(function (v, i) {
            var td = document.createElement("td"); td.textContent = v; if (i > 0) { td.className = "num"; }
            tr.appendChild(td);
          });
          metricsBody.appendChild(tr);
        }
      },
      status: function (e) {
        if (!eventsBody) { return; }
        var empty = $(".empty-row", eventsBody); if (empty) { empty.remove(); }
        var tr = document.createElement("tr");
        [when(e.ts), e.state, e.source, e.reason || ""].forEach(function (v) {
          var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
        });
        eventsBody.appendChild(tr);
      },
      end: function (t, es) {
        es.close();
        indicator(dot, false);
        root.setAttribute("data-ended", t.state);
        producedModels(root);
      }
    }, dot);
  }

  function producedModels(root) {
    var box = $("#produced-models", root);
    if (!box || !window.fetch) { return; }
    fetch(box.getAttribute("data-url"), {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (task) {
        if (!task || !task.models || !task.models.length) { return; }
        box.textContent = "";
        task.models.forEach(function (m) {
          var div = document.createElement("div"), a = document.createElement("a"), b = document.createElement("span");
          a.href = "/models/" + m.id; a.textContent = m.brand + " v" + m.version;
          b.className = "badge " + m.gate_state; b.textContent = m.gate_state;
          div.appendChild(a); div.appendChild(document.createTextNode(" ")); div.appendChild(b);
          box.appendChild(div);
        });
      });
  }

  function tickAges() {
    $all(".last-seen[data-ts]").forEach(function (el) {
      var ts = parseFloat(el.getAttribute("data-ts"));
      if (ts) { el.textContent = ago(ts); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $all("[data-live-tasks]").forEach(liveTasks);
    if ($(".last-seen")) { setInterval(tickAges, 5000); }
    $all("[data-task-stream]").forEach(taskStream);
  });
})();
