// Starts Swagger UI on /api/docs (templates/api_docs/index.html). A file, not an inline script,
// so the page keeps a strict Content-Security-Policy.
(function () {
  "use strict";
  var KEY = "faceapp-api-key";
  var form = document.getElementById("api-key");
  var input = document.getElementById("api-key-value");
  var root = document.getElementById("swagger-ui");

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function start() {
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
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    window.sessionStorage.setItem(KEY, input.value.trim());
    input.value = "";
    start();
  });
  document.getElementById("api-key-forget").addEventListener("click", function () {
    window.sessionStorage.removeItem(KEY);
    start();
  });
  start();
})();
