// Comfort only: the pages work without this file. Turns stacked JSON/YAML blocks into tabs,
// shows copy buttons, shows that Validate and Analyze are working, and points at a label line
// in error.
// Loaded from 'self' (the pages' CSP allows no inline script).
"use strict";

// A WAI-ARIA tablist: one tab in the Tab order (the selected one); the arrow keys, Home and End
// move between tabs and select the one they reach (automatic activation).
function setUpTabs(container) {
  var list = container.querySelector(".tab-list");
  var tabs = Array.prototype.slice.call(container.querySelectorAll("[data-tab]"));
  if (!list || tabs.length === 0) return;
  function select(chosen, focus) {
    tabs.forEach(function (tab) {
      var on = tab === chosen;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      document.getElementById(tab.getAttribute("data-tab")).hidden = !on;
    });
    if (focus) chosen.focus();
  }
  tabs.forEach(function (tab) {
    tab.addEventListener("click", function () { select(tab, false); });
  });
  list.addEventListener("keydown", function (event) {
    var at = tabs.indexOf(document.activeElement);
    if (at < 0) return;
    var to = {
      ArrowRight: (at + 1) % tabs.length,
      ArrowLeft: (at - 1 + tabs.length) % tabs.length,
      Home: 0,
      End: tabs.length - 1
    }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    select(tabs[to], true);
  });
  list.hidden = false;
  container.classList.add("js");
  select(tabs[0], false);
}

// Over plain http by host name there is no navigator.clipboard (it needs a secure context):
// then the text is selected and copied the old way, or left selected for Ctrl+C.
function copyBySelection(target) {
  var range = document.createRange();
  range.selectNodeContents(target);
  var selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  try {
    return document.execCommand("copy");
  } catch (error) {
    return false;
  }
}

function setUpCopy(button) {
  var target = document.getElementById(button.getAttribute("data-copy"));
  if (!target) return;
  button.hidden = false;
  function show(text) {
    button.textContent = text;
    window.setTimeout(function () { button.textContent = "Copy"; }, 2000);
  }
  button.addEventListener("click", function () {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(target.textContent).then(function () {
        show("Copied");
      }, function () {
        show(copyBySelection(target) ? "Copied" : "Selected: press Ctrl+C");
      });
    } else {
      show(copyBySelection(target) ? "Copied" : "Selected: press Ctrl+C");
    }
  });
}

// A form that takes a while (Validate, Analyze): disable its button and say it is working, once.
function setUpBusy(form) {
  var button = form.querySelector("button[type=submit][data-busy-text]");
  var note = form.querySelector(".busy-note");
  if (!button) return;
  var idle = button.textContent;
  form.addEventListener("submit", function () {
    // Disabled after this event, so the submission itself still goes out.
    window.setTimeout(function () {
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      button.textContent = button.getAttribute("data-busy-text");
      if (note) note.hidden = false;
    }, 0);
  });
  // Back/forward may show this page from the browser's cache: ready again.
  window.addEventListener("pageshow", function () {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = idle;
    if (note) note.hidden = true;
  });
}

// The labels box after a validation error: select the line the message names, and scroll the
// box to it (a selection alone does not scroll a textarea). Where the line starts is measured
// with the box holding only the text before it, so lines that wrap are counted right.
function selectErrorLine(textarea) {
  var line = parseInt(textarea.getAttribute("data-error-line"), 10);
  if (!(line > 0)) return;
  var text = textarea.value;
  var lines = text.split("\n");
  var start = 0;
  for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
  var end = start + (lines[line - 1] || "").length;
  textarea.value = text.slice(0, start);
  var before = textarea.scrollHeight;
  textarea.value = text;
  textarea.focus();
  textarea.setSelectionRange(start, end);
  var lineHeight = parseFloat(window.getComputedStyle(textarea).lineHeight) || 20;
  textarea.scrollTop = Math.max(0, before - textarea.clientHeight / 2 - lineHeight);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-tabs]").forEach(setUpTabs);
  document.querySelectorAll("button[data-copy]").forEach(setUpCopy);
  document.querySelectorAll("form[data-busy-form]").forEach(setUpBusy);
  document.querySelectorAll("textarea[data-error-line]").forEach(selectErrorLine);
});
