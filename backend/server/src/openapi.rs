//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the route table of `unike-shared`
//! ([`unike_shared::routes::ALL`]) so it cannot list a route the server does not mount, with the JSON Schemas of
//! every message derived from the shared types themselves (schemars, the `schema` feature of `unike-shared`).

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use unike_shared::auth::{Credentials, SessionInfo, CSRF_HEADER, SESSION_COOKIE};
use unike_shared::events::Event;
use unike_shared::explorer::ExplorerView;
use unike_shared::playground::{
    AnswerRequest, AnswerResponse, AppliedEdit, CaseImport, EditRequest, EditStack, GalleryItem, ImportSummary,
    MmEditCase,
};
use unike_shared::routes::{ALL, EVENTS, EXPLORER, GUEST, LEADERBOARD, LEADERBOARD_CSV, RUN_CASES, SIGN_IN, SIGN_UP};
use unike_shared::runs::{Leaderboard, RunCases, RunInfo, RunRequest};
use unike_shared::workspace::{AuditEntry, Invitation, Member, NewWorkspace, PendingInvitation, RoleChange, Workspace};
use unike_shared::{ApiError, HealthResponse, ModelInfo};

/// The component schemas of every message type, keyed by type name.
fn schemas() -> Map<String, Value> {
    let mut g = SchemaSettings::openapi3().into_generator();
    macro_rules! register {
        ($($t:ty),*) => { $( let _ = g.subschema_for::<$t>(); )* };
    }
    register!(
        HealthResponse,
        ModelInfo,
        ApiError,
        Credentials,
        SessionInfo,
        GalleryItem,
        Workspace,
        NewWorkspace,
        Member,
        Invitation,
        PendingInvitation,
        RoleChange,
        AuditEntry,
        AnswerRequest,
        AnswerResponse,
        EditRequest,
        AppliedEdit,
        EditStack,
        MmEditCase,
        CaseImport,
        ImportSummary,
        RunRequest,
        RunInfo,
        RunCases,
        Leaderboard,
        ExplorerView,
        Event
    );
    g.take_definitions(true)
}

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

/// The query parameters of `path`.
fn query_params(path: &str) -> Vec<Value> {
    let q = |name: &str, required: bool, ty: &str| json!({"name": name, "in": "query", "required": required, "schema": {"type": ty}});
    match path {
        EVENTS => vec![q("workspace", true, "integer")],
        LEADERBOARD | LEADERBOARD_CSV => {
            ["method", "task", "mode", "model", "convention", "source"].iter().map(|n| q(n, false, "string")).collect()
        }
        RUN_CASES => vec![q("method", false, "string")],
        EXPLORER => vec![
            q("layer", false, "integer"),
            q("projection", false, "string"),
            q("workspace", false, "integer"),
            q("focus", false, "string"),
            q("k", false, "integer"),
        ],
        _ => Vec::new(),
    }
}

/// The document.
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    let schemas = schemas();
    for r in ALL {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                // Ids are integers; only image names are strings.
                let ty = if name == "name" { "string" } else { "integer" };
                json!({"name": name, "in": "path", "required": true, "schema": {"type": ty}})
            })
            .chain(query_params(r.path))
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
        // Every write but signing up and in needs the session and its CSRF token (signing out: when a session is live);
        // starting a guest sandbox needs the CSRF header only (there is no session yet).
        if r.path == GUEST {
            op.insert("security".into(), json!([{"csrf": []}]));
        } else if r.method != "get" && ![SIGN_UP, SIGN_IN].contains(&r.path) {
            op.insert("security".into(), json!([{"session": [], "csrf": []}]));
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = Value::Object(op);
    }
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
