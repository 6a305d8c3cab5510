// The API docs page, from the vendored Swagger UI. validatorUrl null: the badge would otherwise send the
// schema to validator.swagger.io, and nothing may leave the machine.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger", validatorUrl: null, deepLinking: true });
