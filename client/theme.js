// The colour theme of the dashboard and the candidate page.
//
// A classic (not module) script loaded in <head>, so the theme is set before the first paint
// (no light flash on a dark screen). The choice is "auto" (follow the system's
// prefers-color-scheme, live), "light" or "dark", kept in localStorage; every
// <select data-theme-switch> on the page shows and changes it. The resolved theme is
// <html data-theme="light|dark">: theme.css keeps the dark palette in one block of variables
// under it. Paper is always light: while printing the theme is light whatever the choice.
(function () {
  "use strict";
  var KEY = "realtime.theme";
  var CHOICES = ["auto", "light", "dark"];
  var dark = window.matchMedia("(prefers-color-scheme: dark)");
  var print = window.matchMedia("print");
  var printing = false;
  var choice = "auto";

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return CHOICES.indexOf(value) >= 0 ? value : "auto";
    } catch (err) {
      return "auto"; // storage disabled (kiosk policies): follow the system
    }
  }

  function apply() {
    var theme = choice === "auto" ? (dark.matches ? "dark" : "light") : choice;
    var root = document.documentElement;
    root.dataset.themeChoice = choice;
    root.dataset.theme = printing || print.matches ? "light" : theme;
    var switches = document.querySelectorAll("select[data-theme-switch]");
    for (var i = 0; i < switches.length; i++) switches[i].value = choice;
  }

  function choose(value) {
    choice = CHOICES.indexOf(value) >= 0 ? value : "auto";
    try {
      if (choice === "auto") window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, choice);
    } catch (err) {
      // not kept: this page still switches
    }
    apply();
  }

  choice = stored();
  apply();
  dark.addEventListener("change", apply);
  print.addEventListener("change", apply);
  window.addEventListener("beforeprint", function () { printing = true; apply(); });
  window.addEventListener("afterprint", function () { printing = false; apply(); });
  window.addEventListener("storage", function (e) { if (e.key === KEY || e.key === null) { choice = stored(); apply(); } });
  document.addEventListener("DOMContentLoaded", apply);
  document.addEventListener("change", function (e) {
    var el = e.target;
    if (el && el.matches && el.matches("select[data-theme-switch]")) choose(el.value);
  });
})();
