// Comfort only: the pages work without this file. Turns stacked JSON/YAML blocks into tabs
// and shows copy buttons. Loaded from 'self' (the pages' CSP allows no inline script).
"use strict";

function setUpTabs(container) {
  var list = container.querySelector(".tab-list");
  var tabs = Array.prototype.slice.call(container.querySelectorAll("[data-tab]"));
  if (!list || tabs.length === 0) return;
  function select(chosen) {
    tabs.forEach(function (tab) {
      var on = tab === chosen;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      document.getElementById(tab.getAttribute("data-tab")).hidden = !on;
    });
  }
  tabs.forEach(function (tab) {
    tab.addEventListener("click", function () { select(tab); });
  });
  list.hidden = false;
  container.classList.add("js");
  select(tabs[0]);
}

function setUpCopy(button) {
  var target = document.getElementById(button.getAttribute("data-copy"));
  if (!target || !navigator.clipboard) return;
  button.hidden = false;
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(target.textContent).then(function () {
      button.textContent = "Copied";
    }, function () {
      button.textContent = "Copy failed";
    });
    window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-tabs]").forEach(setUpTabs);
  document.querySelectorAll("button[data-copy]").forEach(setUpCopy);
});
