/* Linked controls of the train and deploy forms: detectors and versions follow the chosen line and brand;
 * the classes field follows the brand while it is empty or still the previous brand's. */
(function () {
  "use strict";
  function sync(form) {
    var line = form.querySelector("[data-line-select]"), brand = form.querySelector("[data-brand-select]");
    var lineKey = line ? line.value : "", brandName = brand ? brand.value : "";
    Array.prototype.forEach.call(form.querySelectorAll("[data-detectors-of]"), function (row) {
      var mine = row.getAttribute("data-detectors-of") === lineKey;
      row.style.display = mine ? "" : "none";
      if (!mine) { Array.prototype.forEach.call(row.querySelectorAll("input"), function (i) { i.checked = false; }); }
    });
    Array.prototype.forEach.call(form.querySelectorAll("[data-version-select] option[data-line]"), function (o) {
      var anyLine = o.parentNode.getAttribute("data-version-select") === "any-line";  /* a base model may come from another line */
      var fits = (anyLine || !lineKey || o.getAttribute("data-line") === lineKey) && (!brandName || o.getAttribute("data-brand") === brandName);
      o.hidden = !fits; o.disabled = !fits;
      if (!fits && o.selected) { o.parentNode.value = ""; }
    });
  }
  function classes(form, previous) {
    var brand = form.querySelector("[data-brand-select]"), field = form.querySelector("#f-classes");
    if (!brand || !field) { return; }
    var opt = brand.options[brand.selectedIndex];
    var value = opt ? (opt.getAttribute("data-classes") || "") : "";
    if (!field.value || field.value === previous) { field.value = value; }
    return value;
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-linked-form]"), function (form) {
      var prev = "";
      sync(form); prev = classes(form, prev) || prev;
      form.addEventListener("change", function (ev) {
        if (ev.target.matches("[data-line-select], [data-brand-select]")) {
          sync(form);
          if (ev.target.matches("[data-brand-select]")) { prev = classes(form, prev) || ""; }
        }
      });
    });
  });
})();
