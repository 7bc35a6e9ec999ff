/* Swagger UI's start-up for /docs, a file rather than an inline script so that the page runs
 * under the API's Content-Security-Policy (script-src 'self'). The schema's URL comes from
 * the page: <div id="swagger-ui" data-openapi-url="...">. */
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
