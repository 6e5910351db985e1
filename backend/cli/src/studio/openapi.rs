//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the route table of `unike-shared`
//! ([`unike_shared::routes::ALL`]) so it cannot list a route the server does not mount.

use serde_json::{json, Map, Value};
use unike_shared::auth::{CSRF_HEADER, SESSION_COOKIE};
use unike_shared::routes::ALL;

fn schema_ref(name: &str) -> Value {
    match name {
        "binary" => json!({"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}),
        "text" => json!({"content": {"text/csv": {"schema": {"type": "string"}}}}),
        "Event" => json!({"content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}),
        "object" => json!({"content": {"application/json": {"schema": {"type": "object"}}}}),
        n if n.ends_with("[]") => json!({"content": {"application/json": {"schema": {
            "type": "array", "items": {"$ref": format!("#/components/schemas/{}", &n[..n.len() - 2])}}}}}),
        n => json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{n}")}}}}),
    }
}

/// The document.
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in ALL {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some(req) = r.request {
            let mut body = schema_ref(req);
            body["required"] = json!(true);
            op.insert("requestBody".into(), body);
        }
        let mut ok = schema_ref(r.response);
        ok["description"] = json!("success");
        op.insert(
            "responses".into(),
            json!({"200": ok, "4XX": {"description": "the request cannot be served",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}}}),
        );
        if r.method != "get" {
            op.insert("security".into(), json!([{"session": [], "csrf": []}]));
        }
        for name in r.request.into_iter().chain([r.response]) {
            let base = name.trim_end_matches("[]");
            if !["binary", "text", "object"].contains(&base) {
                schemas.insert(
                    base.to_string(),
                    json!({"type": "object", "description": format!("unike_shared::{base}")}),
                );
            }
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = Value::Object(op);
    }
    schemas.insert(
        "ApiError".into(),
        json!({"type": "object", "required": ["error", "code"],
            "properties": {"error": {"type": "string"}, "code": {"type": "integer"}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "UniKE Studio API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER}
            }
        }
    })
}
