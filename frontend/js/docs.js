// Starts Swagger UI on /docs. A file of its own, not an inline script, so the page runs under
// the same Content-Security-Policy (script-src 'self') as the rest of the front end.
/* global SwaggerUIBundle */
SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
});
