// Starts Swagger UI on /api/docs (templates/api_docs/index.html). A file, not an inline script,
// so the page keeps a strict Content-Security-Policy.
//
// The document (/api/openapi.json) never needs a key, so it loads at once. With API_KEYS set,
// every operation but the probes does: until a key is given the page explains that above the
// operations (#api-key-needed), and when an operation refuses the key given (401) it says so
// (#api-key-refused). The key is sent with every request and kept only in the tab.
(function () {
  "use strict";
  var KEY = "faceapp-api-key";
  var form = document.getElementById("api-key");
  var input = document.getElementById("api-key-value");
  var state = document.getElementById("api-key-state");
  var root = document.getElementById("swagger-ui");
  var needed = document.getElementById("api-key-needed");
  var refused = document.getElementById("api-key-refused");
  var keysRequired = root.getAttribute("data-keys-required") === "yes";

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function storeKey(value) {
    try {
      if (value) {
        window.sessionStorage.setItem(KEY, value);
      } else {
        window.sessionStorage.removeItem(KEY);
      }
    } catch (e) {
      // No storage (a locked-down browser): the key lasts until the page is left.
    }
  }

  function show() {
    if (needed) {
      needed.hidden = !(keysRequired && !storedKey());
    }
    state.textContent = storedKey() ? "a key is in use" : "no key";
  }

  function setRefused(visible) {
    if (refused) {
      refused.hidden = !visible;
    }
  }

  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // never send the document to an outside validator
    tryItOutEnabled: true,
    requestInterceptor: function (request) {
      var key = storedKey();
      if (key && !request.headers.Authorization) {
        request.headers.Authorization = "Bearer " + key;
      }
      return request;
    },
    responseInterceptor: function (response) {
      // An operation refused the key given: forget it and say so.
      if (keysRequired && response.status === 401 && storedKey()) {
        storeKey("");
        setRefused(true);
        show();
      }
      return response;
    },
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    storeKey(input.value.trim());
    input.value = "";
    setRefused(false);
    show();
  });
  document.getElementById("api-key-forget").addEventListener("click", function () {
    storeKey("");
    show();
  });
  show();
})();
