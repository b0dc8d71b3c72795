//! A local HTTP server that answers like the Kubernetes API, for the tests of nixuv's API side
//! (no API server can run on the test machines). It keeps objects in memory by collection path and
//! serves: list (a cluster-wide list of a namespaced kind gathers every namespace's objects; label
//! selectors by equality) and watch of any collection (ADDED, MODIFIED and DELETED events as
//! objects change); get; create (POST, 409 if it exists); replace (PUT, 409 on a stale
//! resourceVersion); server-side apply (PATCH `application/apply-patch+yaml`, maps merged); JSON
//! patch (PATCH `application/json-patch+json`, 422 if it does not apply, `test` operations
//! included); merge patch; the `status` subresource (as the object); delete. A claim created by apply is Bound, or Pending when its class is `no-rwx` (a
//! class that cannot provide ReadWriteMany). The JSON is written in the shape of real API
//! responses, not captured from a cluster; what only a real cluster can show is in docs/install.md.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One write the server took: method, path, bearer token, content type, query, body.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub token: String,
    pub content_type: String,
    pub query: String,
    pub body: String,
}

#[derive(Default)]
pub struct Fake {
    /// Objects by collection path (`/api/v1/namespaces/team-a/persistentvolumeclaims`) and name.
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    pub rv: u64,
    pub writes: Vec<Write>,
    /// Every request taken: method and path.
    pub requests: Vec<(String, String)>,
    /// Open watches: the kind (the collection's last segment, e.g. `persistentvolumeclaims`) and
    /// where its events go.
    pub watchers: Vec<(String, tokio::sync::mpsc::UnboundedSender<String>)>,
}

pub type Shared = Arc<Mutex<Fake>>;

pub fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(v: &Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

/// Maps merge, everything else is replaced: enough of server-side apply for these objects.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn matches(obj: &Value, selector: Option<&String>) -> bool {
    selector.into_iter().flat_map(|s| s.split(',')).filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// The collection path of the PersistentVolumeClaims of namespace `ns`.
pub fn pvc_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/persistentvolumeclaims")
}

/// A PersistentVolumeClaim as the API returns it (ReadWriteMany, 50Gi), created `age_secs` ago.
pub fn claim(ns: &str, name: &str, class: &str, phase: &str, age_secs: u64) -> Value {
    let created = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                        "creationTimestamp": humantime::format_rfc3339_seconds(created).to_string()},
           "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}},
                    "storageClassName": class, "volumeMode": "Filesystem"},
           "status": {"phase": phase}})
}

/// The kind a collection path holds: its last segment.
fn kind_of(collection: &str) -> &str {
    collection.rsplit('/').next().unwrap_or_default()
}

impl Fake {
    /// Sends a watch event to the watches of the collection's kind.
    fn notify(&mut self, collection: &str, kind: &str, obj: &Value) {
        let ev = json!({"type": kind, "object": obj}).to_string() + "\n";
        let k = kind_of(collection).to_string();
        self.watchers.retain(|(wk, w)| *wk != k || w.send(ev.clone()).is_ok());
    }

    /// Whether a watch of `kind` is open.
    pub fn watched(&self, kind: &str) -> bool {
        self.watchers.iter().any(|(k, w)| k == kind && !w.is_closed())
    }

    /// Creates or replaces `obj` in `collection` (a new resourceVersion; a uid and creation time
    /// when it has none) and tells the watches.
    pub fn put(&mut self, collection: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.rv));
            obj["metadata"]["creationTimestamp"] = json!("2026-11-26T10:00:00Z");
        }
        let old = self.objects.entry(collection.to_string()).or_default().insert(name, obj.clone());
        self.notify(collection, if old.is_some() { "MODIFIED" } else { "ADDED" }, &obj);
        obj
    }

    /// Deletes an object and tells the watches.
    pub fn delete(&mut self, collection: &str, name: &str) -> Option<Value> {
        let obj = self.objects.get_mut(collection)?.remove(name)?;
        self.rv += 1;
        self.notify(collection, "DELETED", &obj);
        Some(obj)
    }

    /// [`Self::put`] by the object's path (`/api/v1/namespaces/team-a/pods/job-1`).
    pub fn put_at(&mut self, path: &str, obj: Value) -> Value {
        let (collection, _) = path.rsplit_once('/').expect("an object path");
        self.put(collection, obj)
    }

    /// [`Self::delete`] by the object's path.
    pub fn delete_at(&mut self, path: &str) -> Option<Value> {
        let (collection, name) = path.rsplit_once('/')?;
        self.delete(collection, name)
    }

    /// The object at `path`.
    pub fn get_at(&self, path: &str) -> Option<Value> {
        let (collection, name) = path.rsplit_once('/')?;
        self.get(collection, name)
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.objects.get(collection)?.get(name).cloned()
    }

    pub fn namespace(&mut self, name: &str, labels: Value) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        self.put("/api/v1/namespaces", ns);
    }

    /// Paths of PVCs and CronJobs written by the holder of `token`.
    pub fn writes_by(&self, token: &str) -> Vec<String> {
        self.writes
            .iter()
            .filter(|w| w.token == token && (w.path.contains("persistentvolumeclaims") || w.path.contains("cronjobs")))
            .map(|w| w.path.clone())
            .collect()
    }
}

/// The phase a new claim gets: Pending on the class `no-rwx` (which cannot provide
/// ReadWriteMany), Bound otherwise.
fn new_claim_status(obj: &mut Value) {
    let class = obj["spec"]["storageClassName"].as_str().unwrap_or("").to_string();
    obj["status"] = json!({"phase": if class == "no-rwx" { "Pending" } else { "Bound" }});
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = uri.path().to_string();
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut f = fake.lock().unwrap();
    f.requests.push((method.to_string(), path.clone()));
    if method != Method::GET {
        f.writes.push(Write {
            method: method.to_string(),
            path: path.clone(),
            token,
            content_type: ctype.clone(),
            query: uri.query().unwrap_or("").to_string(),
            body: body.clone(),
        });
    }
    // A collection path has an even number of segments after the group/version prefix.
    let prefix_len = if path.starts_with("/api/") { 2 } else { 3 };
    // The status subresource is served as the object itself (the writers here send status only).
    let path = match path.strip_suffix("/status") {
        Some(p) if (p.trim_start_matches('/').split('/').count() - prefix_len) % 2 == 0 => p.to_string(),
        _ => path,
    };
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_item = (segs.len() - prefix_len) % 2 == 0 && segs.len() > prefix_len;
    let (collection, name) = if is_item {
        (format!("/{}", segs[..segs.len() - 1].join("/")), segs[segs.len() - 1].to_string())
    } else {
        (path.clone(), String::new())
    };
    match (method.clone(), is_item) {
        (Method::GET, false) => {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                f.watchers.push((kind_of(&collection).to_string(), tx));
                let s = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
                });
                return ([("content-type", "application/json")], Body::from_stream(s)).into_response();
            }
            // A cluster-wide list of a namespaced kind gathers every namespace's collection.
            let kind = segs.last().copied().unwrap_or_default();
            let items: Vec<Value> = f
                .objects
                .iter()
                .filter(|(c, _)| {
                    **c == collection
                        || (c.ends_with(&format!("/{kind}"))
                            && c.starts_with(&path.replace(&format!("/{kind}"), "/namespaces/")))
                })
                .flat_map(|(_, objs)| objs.values().cloned())
                .filter(|o| matches(o, q.get("labelSelector")))
                .collect();
            ok(
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": f.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, true) => match f.get(&collection, &name) {
            Some(o) => ok(&o),
            None => status(404, "NotFound", &format!("{name} not found")),
        },
        (Method::POST, false) => {
            let mut obj: Value = serde_json::from_str(&body).unwrap();
            let name = obj["metadata"]["name"].as_str().map(String::from).unwrap_or_else(|| {
                let n = format!("generated-{}", f.rv + 1);
                obj["metadata"]["name"] = json!(n);
                n
            });
            if f.get(&collection, &name).is_some() {
                return status(409, "AlreadyExists", &format!("{name} already exists"));
            }
            ok(&f.put(&collection, obj))
        }
        (Method::PUT, true) => {
            let obj: Value = serde_json::from_str(&body).unwrap();
            let current = f.get(&collection, &name);
            let Some(current) = current else { return status(404, "NotFound", &name) };
            if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let mut obj = obj;
            obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
            ok(&f.put(&collection, obj))
        }
        (Method::PATCH, true) if ctype.starts_with("application/json-patch") => {
            let Some(mut obj) = f.get(&collection, &name) else { return status(404, "NotFound", &name) };
            let patch: json_patch::Patch = match serde_json::from_str(&body) {
                Ok(p) => p,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            if let Err(e) = json_patch::patch(&mut obj, &patch.0) {
                return status(422, "Invalid", &e.to_string());
            }
            ok(&f.put(&collection, obj))
        }
        (Method::PATCH, true) => {
            let patch: Value = serde_json::from_str(&body).unwrap();
            let mut obj = match f.get(&collection, &name) {
                Some(o) => o,
                None if ctype.starts_with("application/apply-patch") => {
                    let mut o = json!({"metadata": {"name": name}});
                    if collection.ends_with("/persistentvolumeclaims") {
                        let mut p = patch.clone();
                        new_claim_status(&mut p);
                        o["status"] = p["status"].clone();
                    }
                    o
                }
                None => return status(404, "NotFound", &name),
            };
            merge(&mut obj, &patch);
            if ctype.starts_with("application/apply-patch") {
                obj["metadata"]["managedFields"] =
                    json!([{"manager": q.get("fieldManager").cloned().unwrap_or_default(), "operation": "Apply"}]);
            }
            ok(&f.put(&collection, obj))
        }
        (Method::DELETE, true) => match f.delete(&collection, &name) {
            Some(_) => ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})),
            None => status(404, "NotFound", &name),
        },
        _ => status(405, "MethodNotAllowed", "not served by this test server"),
    }
}

/// Serves `fake` on a local port.
pub async fn start(fake: Shared) -> std::net::SocketAddr {
    let app = Router::new().fallback(handle).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A kubeconfig for the server at `addr` with bearer token `token` (namespace nixuv-system).
pub fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr, token: &str) -> std::path::PathBuf {
    let path = dir.join(format!("kubeconfig-{token}"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: 'http://{addr}'}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: local, user: u, namespace: nixuv-system}}\ncurrent-context: c\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}
