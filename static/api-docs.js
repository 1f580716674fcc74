// Starts Swagger UI on /api/docs (templates/api_docs/index.html). A file, not an inline script,
// so the page keeps a strict Content-Security-Policy.
//
// With API_KEYS set, the document itself needs a key: until one is given the page explains that
// (#api-key-needed) instead of letting Swagger UI fail with "Failed to load API definition".
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

  function show(explain) {
    if (needed) {
      needed.hidden = !explain;
    }
    root.hidden = explain;
    state.textContent = storedKey() ? "a key is in use" : "no key";
  }

  function start() {
    if (keysRequired && !storedKey()) {
      show(true);
      return;
    }
    show(false);
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
        // The document refused: the key is wrong. Say so, rather than "Failed to load".
        if (keysRequired && response.status === 401 && /\/openapi\.json$/.test(response.url)) {
          storeKey("");
          if (refused) {
            refused.hidden = false;
          }
          show(true);
        }
        return response;
      },
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    storeKey(input.value.trim());
    input.value = "";
    if (refused) {
      refused.hidden = true;
    }
    start();
  });
  document.getElementById("api-key-forget").addEventListener("click", function () {
    storeKey("");
    start();
  });
  start();
})();
