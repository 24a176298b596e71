//! A subset of PD's HTTP API (tikv/pd `server/api/router.go`,
//! `server/api/store.go`, `pkg/response/store.go`) with PD's paths, JSON
//! shapes and answer texts, over the embedded PD's state, plus test-pd's
//! own counters endpoint.
//!
//! | method | path | PD's meaning |
//! |---|---|---|
//! | GET | /pd/api/v1/stores[?state=N...] | stores; Up and Offline unless `state` says |
//! | GET | /pd/api/v1/store/{id} | one store (404 when PD does not know it) |
//! | DELETE | /pd/api/v1/store/{id}[?force] | Offline (`force`: and physically destroyed, so its address may be reused); Tombstone once it reports no regions |
//! | POST | /pd/api/v1/store/{id}/state?state=Up\|Offline | set the state (test-pd also takes Tombstone: PD's burying of an empty store) |
//! | DELETE | /pd/api/v1/stores/remove-tombstone | forget every Tombstone store |
//! | GET | /pd/api/v1/members | members and leader |
//! | GET | /test-pd/api/v1/counters | ours: calls per method and per store |
//! | POST | /test-pd/api/v1/store/{id}/bury | ours: Tombstone at once, regions or not |

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Body, Method, Request, Response, StatusCode};
use kvproto::metapb::{self, StoreState};
use protobuf::ProtobufEnum;
use serde_json::{json, Value};
use test_pd::{Method as PdMethod, Server as PdServer};

fn reply(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from(serde_json::to_vec_pretty(v).unwrap_or_default()))
        .unwrap_or_default()
}

fn ok(v: Value) -> Response<Body> {
    reply(StatusCode::OK, &v)
}

fn not_found_store(id: u64) -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        &json!(format!("[PD:core:ErrStoreNotFound]store {} not found", id)),
    )
}

/// PD's answer about a Tombstone store (`errs.ErrStoreRemoved`, 410).
fn removed_store(id: u64) -> Response<Body> {
    reply(
        StatusCode::GONE,
        &json!(format!(
            "[PD:core:ErrStoreRemoved]store {} has been removed",
            id
        )),
    )
}

fn state_name(s: StoreState) -> &'static str {
    match s {
        StoreState::Up => "Up",
        StoreState::Offline => "Offline",
        StoreState::Tombstone => "Tombstone",
    }
}

/// PD's `StoreInfo`: `{"store": MetaStore, "status": StoreStatus}`. The
/// meta follows Go's encoding of metapb.Store (enums as numbers, zero
/// values left out) plus `state_name`.
fn store_info(pd: &PdServer, s: &metapb::Store) -> Value {
    let mut meta = serde_json::Map::new();
    meta.insert("id".into(), json!(s.get_id()));
    meta.insert("address".into(), json!(s.get_address()));
    if s.get_state() != StoreState::Up {
        meta.insert("state".into(), json!(s.get_state() as i32));
    }
    if !s.get_labels().is_empty() {
        let labels: Vec<Value> = s
            .get_labels()
            .iter()
            .map(|l| json!({"key": l.get_key(), "value": l.get_value()}))
            .collect();
        meta.insert("labels".into(), json!(labels));
    }
    for (k, v) in [
        ("version", s.get_version()),
        ("peer_address", s.get_peer_address()),
        ("status_address", s.get_status_address()),
        ("git_hash", s.get_git_hash()),
        ("deploy_path", s.get_deploy_path()),
    ] {
        if !v.is_empty() {
            meta.insert(k.into(), json!(v));
        }
    }
    if s.get_start_timestamp() != 0 {
        meta.insert("start_timestamp".into(), json!(s.get_start_timestamp()));
    }
    if s.get_physically_destroyed() {
        meta.insert("physically_destroyed".into(), json!(true));
    }
    if s.get_last_heartbeat() != 0 {
        meta.insert("last_heartbeat".into(), json!(s.get_last_heartbeat()));
    }
    if s.get_node_state() as i32 != 0 {
        meta.insert("node_state".into(), json!(s.get_node_state() as i32));
    }
    meta.insert("state_name".into(), json!(state_name(s.get_state())));
    let mut status = serde_json::Map::new();
    let hb = pd.last_heartbeat(s.get_id());
    status.insert(
        "region_count".into(),
        json!(hb.as_ref().map(|h| h.get_region_count()).unwrap_or(0)),
    );
    status.insert("leader_count".into(), json!(0));
    if let Some(h) = hb {
        status.insert("capacity".into(), json!(h.get_capacity()));
        status.insert("available".into(), json!(h.get_available()));
    }
    json!({"store": meta, "status": status})
}

fn query(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn bad_id(s: &str) -> Response<Body> {
    reply(
        StatusCode::BAD_REQUEST,
        &json!(format!(
            "[PD:apiutil:ErrInvalidInput]invalid store id {:?}",
            s
        )),
    )
}

/// Answers one request.
pub async fn route(pd: Arc<PdServer>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let id = |s: &str| s.parse::<u64>().ok();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["pd", "api", "v1", "stores"]) => list_stores(&pd, &req),
        (&Method::DELETE, ["pd", "api", "v1", "stores", "remove-tombstone"]) => {
            pd.remove_all_tombstones();
            ok(json!("Remove tombstone successfully."))
        }
        (&Method::GET, ["pd", "api", "v1", "store", s]) => match id(s) {
            None => bad_id(s),
            Some(id) => match pd.get_store(id) {
                Some(st) => ok(store_info(&pd, &st)),
                None => not_found_store(id),
            },
        },
        (&Method::DELETE, ["pd", "api", "v1", "store", s]) => match id(s) {
            None => bad_id(s),
            Some(id) => delete_store(&pd, id, &req),
        },
        (&Method::POST, ["pd", "api", "v1", "store", s, "state"]) => match id(s) {
            None => bad_id(s),
            Some(id) => set_state(&pd, id, &req),
        },
        (&Method::GET, ["pd", "api", "v1", "members"]) => members(&pd),
        (&Method::GET, ["test-pd", "api", "v1", "counters"]) => counters(&pd),
        (&Method::POST, ["test-pd", "api", "v1", "store", s, "bury"]) => match id(s) {
            None => bad_id(s),
            Some(id) => bury_store(&pd, id),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            &json!(format!("404 page not found: {} {}", req.method(), path)),
        ),
    }
}

fn list_stores(pd: &PdServer, req: &Request<Body>) -> Response<Body> {
    let mut accept = vec![];
    for (k, v) in query(req) {
        if k != "state" {
            continue;
        }
        match v
            .parse::<i32>()
            .ok()
            .and_then(<StoreState as ProtobufEnum>::from_i32)
        {
            Some(s) => accept.push(s),
            None => {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!(format!("unknown StoreState: {}", v)),
                )
            }
        }
    }
    if accept.is_empty() {
        accept = vec![StoreState::Up, StoreState::Offline];
    }
    let stores: Vec<Value> = pd
        .all_stores()
        .iter()
        .filter(|s| accept.contains(&s.get_state()))
        .map(|s| store_info(pd, s))
        .collect();
    ok(json!({"count": stores.len(), "stores": stores}))
}

fn delete_store(pd: &PdServer, id: u64, req: &Request<Body>) -> Response<Body> {
    let Some(s) = pd.get_store(id) else {
        return not_found_store(id);
    };
    if s.get_state() == StoreState::Tombstone {
        return removed_store(id);
    }
    // PD takes the key's presence, whatever its value (`_, force :=
    // r.URL.Query()["force"]`, tikv/pd `server/api/store.go`): "physically
    // destroyed", not "bury now".
    let force = query(req).iter().any(|(k, _)| k == "force");
    if let Err(e) = pd.remove_store(id, force) {
        return reply(StatusCode::BAD_REQUEST, &json!(e));
    }
    // PD buries an Offline store once no region is left on it; test-pd has
    // no regions, so it takes the store's own last report.
    let empty = pd
        .last_heartbeat(id)
        .map(|h| h.get_region_count() == 0)
        .unwrap_or(true);
    if empty {
        pd.set_store_state(id, StoreState::Tombstone);
    }
    ok(json!("The store is set as Offline."))
}

/// test-pd's own: bury a store at once, whatever its regions (what PD
/// does only once they are gone).
fn bury_store(pd: &PdServer, id: u64) -> Response<Body> {
    match pd.get_store(id) {
        None => not_found_store(id),
        Some(_) => {
            pd.set_store_state(id, StoreState::Tombstone);
            ok(json!("The store is buried."))
        }
    }
}

fn set_state(pd: &PdServer, id: u64, req: &Request<Body>) -> Response<Body> {
    let want = query(req)
        .into_iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let state = match want.to_ascii_lowercase().as_str() {
        "up" => StoreState::Up,
        "offline" => StoreState::Offline,
        "tombstone" => StoreState::Tombstone,
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                &json!(format!("invalid state {}", want)),
            )
        }
    };
    match pd.get_store(id) {
        None => not_found_store(id),
        Some(s) if s.get_state() == StoreState::Tombstone => removed_store(id),
        Some(_) => {
            pd.set_store_state(id, state);
            ok(json!("The store's state is updated."))
        }
    }
}

fn members(pd: &PdServer) -> Response<Body> {
    let eps = pd.endpoints();
    let ms: Vec<Value> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"name": format!("pd-{}", i), "member_id": 100 + i as u64,
                   "client_urls": [format!("http://{}", e)], "peer_urls": [format!("http://{}", e)]})
        })
        .collect();
    let leader = ms.get(pd.leader()).cloned().unwrap_or(Value::Null);
    ok(
        json!({"header": {"cluster_id": pd.cluster_id()}, "members": ms, "leader": leader, "etcd_leader": leader}),
    )
}

fn counters(pd: &PdServer) -> Response<Body> {
    let mut per_store: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (m, id, n) in pd.store_counts() {
        per_store
            .entry(format!("{:?}", m))
            .or_default()
            .insert(id.to_string(), n);
    }
    let methods: BTreeMap<String, u64> = [
        PdMethod::GetMembers,
        PdMethod::GetStore,
        PdMethod::PutStore,
        PdMethod::GetAllStores,
        PdMethod::StoreHeartbeat,
        PdMethod::AllocId,
        PdMethod::IsBootstrapped,
        PdMethod::Bootstrap,
    ]
    .iter()
    .map(|m| (format!("{:?}", m), pd.method_count(*m)))
    .collect();
    ok(json!({
        "methods": methods,
        "per_store": per_store,
        // A PD client asks GetMembers when it starts and on every reconnect.
        "get_members": pd.method_count(PdMethod::GetMembers),
    }))
}
