// Renders the OpenAPI document with Swagger UI (served from this site, no CDN).
"use strict";
(function () {
  const root = document.getElementById("swagger");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    tryItOutEnabled: false,
    validatorUrl: null,
  });
})();
