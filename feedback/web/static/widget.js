/* Tuneback feedback widget: thumbs up/down and an optional comment on a chat answer.
 *
 * Include it once, with the page's public widget key (never an agent, server or admin key):
 *   <script src="https://TUNEBACK/widget.js" data-key="tb_..." defer></script>
 * and mark each answer with its completion id, and, where the chat page's backend signs
 * votes, with the vote token it got for this answer and user (POST /v1/vote-tokens):
 *   <div data-tuneback-completion="COMPLETION_ID" data-tuneback-token="TOKEN"></div>
 * Without a token the vote is unverified: it replaces no one's, and its answer carries a
 * token for that one vote (kept in localStorage until it expires), so a second click or a
 * comment changes this browser's vote instead of adding one.
 * Answers added later are found automatically, or call TunebackWidget.attach(element, id[, token]).
 * Optional attributes on the script tag: data-user (the user an unsigned vote claims; default
 * a random id kept in localStorage), data-comment="off" (no comment box),
 * data-css="off" (bring your own styles for the .tuneback-* classes).
 *
 * Votes go to POST /v1/feedback with an Idempotency-Key per action, so a retry after a
 * network error or a 5xx/429 never counts twice. No dependencies; no innerHTML.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.TunebackWidget) { return; }
  var KEY = script.getAttribute("data-key") || "";
  var API = new URL(script.src, document.baseURI).origin;
  var COMMENTS = script.getAttribute("data-comment") !== "off";
  var DELAYS = [250, 750, 1500];
  var MAX_WAIT = 10000;

  function randomId() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function userRef() {
    var given = script.getAttribute("data-user");
    if (given) { return given; }
    try {
      var known = window.localStorage.getItem("tuneback-user");
      if (!known) { known = "anon-" + randomId(); window.localStorage.setItem("tuneback-user", known); }
      return known;
    } catch (e) {
      return null; /* storage blocked: the vote names no user */
    }
  }

  /* Tokens for this browser's unverified votes, by completion id, dropped once expired. */
  var STORE = "tuneback-votes";
  var MAX_KEPT = 200;

  function expiry(token) {
    try {
      var payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(window.atob(payload))[2] * 1000;
    } catch (e) {
      return 0;
    }
  }

  function keptTokens() {
    try {
      var all = JSON.parse(window.localStorage.getItem(STORE) || "{}");
      return all && typeof all === "object" ? all : {};
    } catch (e) {
      return {}; /* storage blocked or garbled: tokens last for the page view */
    }
  }

  function keptToken(completionId) {
    var token = keptTokens()[completionId];
    return typeof token === "string" && expiry(token) > Date.now() + 60000 ? token : null;
  }

  function keepToken(completionId, token) {
    var all = keptTokens(), now = Date.now();
    if (token === null) { delete all[completionId]; }
    var ids = Object.keys(all).filter(function (id) { return typeof all[id] === "string" && expiry(all[id]) > now; });
    var kept = {};
    ids.slice(-(MAX_KEPT - 1)).forEach(function (id) { kept[id] = all[id]; });
    if (token !== null) { kept[completionId] = token; }
    try { window.localStorage.setItem(STORE, JSON.stringify(kept)); } catch (e) { /* blocked: fine */ }
  }

  function addStyles() {
    if (script.getAttribute("data-css") === "off" || document.querySelector("link[data-tuneback-css]")) { return; }
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = API + "/widget.css";
    link.setAttribute("data-tuneback-css", "");
    document.head.appendChild(link);
  }

  /* POST a vote; retry transient failures with the same Idempotency-Key. */
  function send(body, idemKey, attempt, done) {
    fetch(API + "/v1/feedback", {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Authorization": "Bearer " + KEY, "Content-Type": "application/json", "Idempotency-Key": idemKey },
      body: JSON.stringify(body)
    }).then(function (response) {
      if (response.ok) {
        response.json().then(function (data) { done(null, data); }, function () { done(null, null); });
        return;
      }
      var transient = response.status === 429 || response.status >= 500;
      if (transient && attempt < DELAYS.length) {
        var wait = Number(response.headers.get("Retry-After")) * 1000 || DELAYS[attempt];
        setTimeout(function () { send(body, idemKey, attempt + 1, done); }, Math.min(wait, MAX_WAIT));
        return;
      }
      response.json().then(function (data) {
        done((data && data.error && data.error.message) || ("HTTP " + response.status), null, response.status);
      }, function () { done("HTTP " + response.status, null, response.status); });
    }, function () {
      /* Network error, or the browser refused the answer (origin not allowed). */
      if (attempt < DELAYS.length) {
        setTimeout(function () { send(body, idemKey, attempt + 1, done); }, DELAYS[attempt]);
      } else {
        done("the feedback service could not be reached from this page");
      }
    });
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text) { node.textContent = text; }
    return node;
  }

  /* The controls, built from elements and text only. */
  function controls() {
    var ui = { box: element("div", "tuneback-widget") };
    ui.box.setAttribute("role", "group");
    ui.box.setAttribute("aria-label", "Rate this answer");
    ui.up = element("button", "tuneback-up", "\uD83D\uDC4D");
    ui.down = element("button", "tuneback-down", "\uD83D\uDC4E");
    ui.up.setAttribute("aria-label", "Good answer");
    ui.down.setAttribute("aria-label", "Bad answer");
    [ui.up, ui.down].forEach(function (b) { b.type = "button"; b.setAttribute("aria-pressed", "false"); });
    ui.status = element("span", "tuneback-status");
    ui.status.setAttribute("role", "status");
    ui.status.setAttribute("aria-live", "polite");
    ui.form = element("form", "tuneback-comment");
    var label = element("label", null, "Tell us more (optional)");
    ui.text = element("textarea");
    ui.text.id = label.htmlFor = "tuneback-c-" + randomId();
    ui.text.rows = 2;
    ui.text.maxLength = 2000;
    ui.submit = element("button", null, "Send comment");
    ui.submit.type = "submit";
    [label, ui.text, ui.submit].forEach(function (n) { ui.form.appendChild(n); });
    ui.form.hidden = true;
    [ui.up, ui.down, ui.status, ui.form].forEach(function (n) { ui.box.appendChild(n); });
    return ui;
  }

  function attach(host, completionId, signed) {
    if (!host || !completionId || host.getAttribute("data-tuneback-state")) { return; }
    signed = signed || host.getAttribute("data-tuneback-token");
    var ui = controls();
    host.appendChild(ui.box);
    var rating = null, own = null; /* own: this vote's token, if storage is blocked */
    function setState(state, message) {
      host.setAttribute("data-tuneback-state", state);
      ui.status.textContent = message;
      var busy = state === "sending";
      ui.up.disabled = busy; ui.down.disabled = busy; ui.submit.disabled = busy;
    }
    function vote(choice, comment) {
      var body = { completion_id: completionId, rating: choice };
      var token = signed || keptToken(completionId) || own;
      var user = token ? null : userRef(); /* a token names the user itself */
      if (token) { body.token = token; }
      if (user) { body.user = user; }
      if (comment) { body.comment = comment; }
      setState("sending", "Sending\u2026");
      send(body, "tbw-" + randomId(), 0, function (error, data, status) {
        if (error && (status === 403 || status === 404) && token && !signed) {
          keepToken(completionId, null); /* our vote's token is no longer valid: vote anew */
          own = null;
          vote(choice, comment);
          return;
        }
        if (error) { setState("error", "Your feedback was not sent: " + error + ". Please try again."); return; }
        if (!signed && data && typeof data.token === "string") {
          own = data.token;
          keepToken(completionId, own);
        }
        rating = choice;
        ui.up.setAttribute("aria-pressed", String(choice === "up"));
        ui.down.setAttribute("aria-pressed", String(choice === "down"));
        setState("sent", comment ? "Thanks, your comment was sent." : "Thanks for your feedback.");
        ui.form.hidden = !(COMMENTS && !comment);
        if (comment) { ui.text.value = ""; }
      });
    }
    ui.up.addEventListener("click", function () { vote("up"); });
    ui.down.addEventListener("click", function () { vote("down"); });
    ui.form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (rating && ui.text.value.trim()) { vote(rating, ui.text.value); }
    });
    setState("idle", "");
  }

  function scan(root) {
    var nodes = (root || document).querySelectorAll("[data-tuneback-completion]");
    Array.prototype.forEach.call(nodes, function (node) {
      attach(node, node.getAttribute("data-tuneback-completion"));
    });
  }

  window.TunebackWidget = { attach: attach, scan: scan };
  function start() {
    addStyles();
    scan(document);
    new MutationObserver(function () { scan(document); }).observe(document.body, { childList: true, subtree: true });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
