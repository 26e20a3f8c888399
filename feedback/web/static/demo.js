/* The demo chat page: send the conversation to /demo/chat (same origin, CSRF token in a
 * header), show the answer as text while it streams in, then put the feedback widget
 * under it (the completion is logged before the stream's last event). */
(function () {
  "use strict";
  var form = document.getElementById("ask");
  var input = document.getElementById("question");
  var list = document.getElementById("chat");
  var status = document.getElementById("chat-status");
  var history = [];

  function bubble(role, text) {
    var item = document.createElement("li");
    item.className = "msg msg-" + role;
    var who = document.createElement("span");
    who.className = "role";
    who.textContent = role === "user" ? "you" : "assistant";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    list.appendChild(item);
    return item;
  }

  /* Call onData with each server-sent event's data, in order. */
  function readEvents(response, onData) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (part) {
        if (part.done) { return; }
        buffer += decoder.decode(part.value, { stream: true });
        var events = buffer.split("\n\n");
        buffer = events.pop();
        events.forEach(function (event) {
          event.split("\n").forEach(function (line) {
            if (line.indexOf("data: ") === 0) { onData(line.slice(6)); }
          });
        });
        return pump();
      });
    }
    return pump();
  }

  function ask(question) {
    var answer = null;
    var id = null;
    var finished = false;
    return fetch(form.getAttribute("data-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": form.getAttribute("data-csrf") },
      body: JSON.stringify({ messages: history.concat([{ role: "user", content: question }]) })
    }).then(function (response) {
      if (!response.ok) {
        return response.json().then(function (data) {
          throw new Error((data.error && data.error.message) || ("HTTP " + response.status));
        });
      }
      answer = bubble("assistant", "");
      var text = answer.querySelector(".text");
      return readEvents(response, function (data) {
        if (data === "[DONE]") { finished = true; return; }
        var chunk = JSON.parse(data);
        if (chunk.error) { throw new Error(chunk.error.message); }
        id = chunk.id;
        var delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) { text.textContent += delta.content; }
      }).then(function () {
        if (!finished || !id) { throw new Error("the answer was cut short"); }
        history.push({ role: "user", content: question }, { role: "assistant", content: text.textContent });
        var rate = document.createElement("div");
        rate.setAttribute("data-tuneback-completion", id);
        answer.appendChild(rate);
        if (window.TunebackWidget) { window.TunebackWidget.attach(rate, id); }
      });
    }).catch(function (error) {
      if (answer) { answer.remove(); }
      throw error;
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var question = input.value.trim();
    if (!question) { return; }
    var asked = bubble("user", question);
    input.value = "";
    form.querySelector("button").disabled = true;
    status.textContent = "The model is answering\u2026";
    ask(question).then(function () {
      status.textContent = "";
    }, function (error) {
      asked.remove();
      input.value = question;
      status.textContent = "No answer: " + error.message;
    }).then(function () {
      form.querySelector("button").disabled = false;
      input.focus();
    });
  });
})();
