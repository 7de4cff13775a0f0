//! The HTTP/JSON API (axum), served on a root-only unix socket and optionally on TCP
//! behind a bearer token and a source allow-list. Every request is logged with its outcome.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Query, Request, State as AxState},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tracing::info;

use crate::{
    netlink::{self, Netlink},
    runtime::{ChangeError, Runtime},
    state::{Proto, ServiceId, State},
};

pub struct Shared {
    pub rt: Mutex<Runtime>,
    pub shutdown: Notify,
    pub unload: std::sync::atomic::AtomicBool,
    /// rtnetlink, to resolve the MACs of a new state's real servers (None: unavailable).
    pub netlink: Option<Netlink>,
}

pub type Ctx = Arc<Shared>;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

type ApiResult = Result<Json<Value>, ApiError>;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/state", get(get_state).put(put_state))
        .route("/v1/stats", get(get_stats))
        .route("/v1/conns", get(get_conns))
        .route("/v1/zero", post(zero))
        .route("/v1/route", get(route))
        .route("/v1/status", get(status))
        .route("/v1/health", get(crate::health::api::get_health))
        .route("/v1/events", get(crate::health::api::get_events))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/openapi.json", get(openapi))
        .layer(middleware::from_fn(log_requests))
        .with_state(ctx)
}

async fn log_requests(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let res = next.run(req).await;
    info!(target: "lb_daemon::api", %method, %path, status = res.status().as_u16(), "request");
    res
}

/// TCP listener guard: bearer token and optional source allow-list.
pub async fn require_token(
    AxState((token, allow)): AxState<(Arc<String>, Arc<Vec<IpAddr>>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if !allow.is_empty() && !allow.contains(&peer.ip()) {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!("source {} is not in api.allow", peer.ip()),
        )
        .into_response();
    }
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(OverTcp);
    next.run(req).await
}

/// Marks a request that came through the TCP listener (not the local unix socket).
#[derive(Clone, Copy)]
pub struct OverTcp;

/// Exec health checks run shell commands as the daemon's user (root): a bearer token
/// for the network API must not be a way to run commands on the balancer. Over TCP,
/// a state may keep the exec commands it has but not add or change one.
fn refuse_new_exec_over_tcp(current: &State, new: &State) -> Result<(), ApiError> {
    let have = current.exec_commands();
    match new.exec_commands().into_iter().find(|c| !have.contains(c)) {
        None => Ok(()),
        Some((svc, backend, cmd)) => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "exec health check `{cmd}` on {svc}{}: exec checks run commands as root, so they \
                 can be added or changed only through the local unix socket (lbctl on the \
                 balancer) or the config file, not the TCP API",
                backend.map(|b| format!(" backend {b}")).unwrap_or_default()
            ),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn get_state(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let rt = ctx.rt.lock().await;
    Ok(Json(
        json!({ "generation": rt.generation, "state": rt.state }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutState {
    generation: u64,
    state: State,
}

async fn put_state(
    AxState(ctx): AxState<Ctx>,
    over_tcp: Option<axum::Extension<OverTcp>>,
    body: Result<Json<PutState>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|e| bad(format!("request body: {}", e.body_text())))?;
    if over_tcp.is_some() {
        refuse_new_exec_over_tcp(&ctx.rt.lock().await.state, &body.state)?;
    }
    // New MAC-less real servers are resolved first, without holding the lock.
    let unknown = ctx.rt.lock().await.unknown_paths(&body.state);
    let paths = match &ctx.netlink {
        Some(nl) if !unknown.is_empty() => nl.paths(unknown, netlink::RESOLVE_WAIT).await,
        _ => Default::default(),
    };
    let mut rt = ctx.rt.lock().await;
    rt.add_paths(paths);
    match rt.replace_state(body.generation, body.state) {
        Ok(report) => {
            info!(generation = rt.generation, ?report, "state replaced");
            Ok(Json(json!({ "generation": rt.generation, "report": {
                "services_added": report.services_added,
                "services_removed": report.services_removed,
                "services_changed": report.services_changed,
                "slots_written": report.slots_written,
                "unresolved": report.unresolved,
            }})))
        }
        Err(e @ ChangeError::Conflict { .. }) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(bad(e)),
    }
}

async fn get_stats(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let rt = ctx.rt.lock().await;
    let v = crate::stats::stats_view(&rt).map_err(internal)?;
    Ok(Json(
        serde_json::to_value(v).map_err(|e| internal(e.into()))?,
    ))
}

async fn get_conns(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let rt = ctx.rt.lock().await;
    Ok(Json(json!({ "conns": rt.conns() })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ZeroBody {
    #[serde(default)]
    service: Option<ServiceId>,
}

async fn zero(AxState(ctx): AxState<Ctx>, body: Option<Json<ZeroBody>>) -> ApiResult {
    let body = body.map(|b| b.0).unwrap_or_default();
    let mut rt = ctx.rt.lock().await;
    match body.service {
        None => rt.dp.zero(None).map_err(internal)?,
        Some(id) => {
            let svc = rt
                .state
                .services
                .iter()
                .find(|s| s.id() == id)
                .cloned()
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no such service {id}")))?;
            let idx = rt.proj.vip_idx(&id).into_iter().collect::<Vec<_>>();
            let ids: Vec<u32> = svc
                .backends
                .iter()
                .filter_map(|r| rt.proj.backend_id(&id, r.address))
                .collect();
            rt.dp.zero(Some((&idx, &ids))).map_err(internal)?;
        }
    }
    Ok(Json(json!({ "zeroed": true })))
}

#[derive(Deserialize)]
struct RouteQuery {
    client: SocketAddr,
    vip: SocketAddr,
    #[serde(default = "tcp")]
    proto: Proto,
}

fn tcp() -> Proto {
    Proto::Tcp
}

async fn route(
    AxState(ctx): AxState<Ctx>,
    q: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let rt = ctx.rt.lock().await;
    let a = rt
        .route(q.client, q.vip, q.proto)
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    Ok(Json(
        serde_json::to_value(a).map_err(|e| internal(e.into()))?,
    ))
}

async fn status(AxState(ctx): AxState<Ctx>) -> ApiResult {
    let rt = ctx.rt.lock().await;
    let backends: usize = rt.state.services.iter().map(|s| s.backends.len()).sum();
    // The attached interfaces as the kernel has them (MAC, addresses).
    let links: Vec<_> = rt
        .attached
        .iter()
        .filter_map(|(n, _)| rt.interfaces.iter().find(|i| &i.name == n))
        .collect();
    let unresolved: std::collections::BTreeSet<IpAddr> =
        rt.proj.unresolved().iter().map(|u| u.address).collect();
    // The BACKENDS entries as the data plane has them.
    let mut entries = Vec::new();
    for s in &rt.state.services {
        for r in &s.backends {
            let Some(id) = rt.proj.backend_id(&s.id(), r.address) else {
                continue;
            };
            let b = rt.dp.backend(id).map_err(internal)?;
            entries.push(json!({
                "service": s.id(),
                "address": r.address,
                "id": id,
                "mac": crate::state::Mac(b.mac),
                "mode": r.forward,
            }));
        }
    }
    let ctrl = rt.dp.ctrl().map_err(internal)?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "instance": rt.cfg.daemon.instance,
        "generation": rt.generation,
        "adopted": rt.adopted,
        "interfaces": rt.attached.iter().map(|(n, m)| json!({"name": n, "mode": m})).collect::<Vec<_>>(),
        "links": links,
        "services": rt.state.services.len(),
        "backends": backends,
        "conns": rt.dp.conns().len(),
        "conn_capacity": rt.cfg.capacity.conn_table,
        "conn_timeout": rt.cfg.daemon.conn_timeout,
        "tunnel_source_v4": std::net::Ipv4Addr::from(ctrl.tun_src_v4),
        "tunnel_source_v6": std::net::Ipv6Addr::from(ctrl.tun_src_v6),
        "unresolved": unresolved,
        "unresolved_reasons": rt.proj.unresolved(),
        "paths": rt.learned.paths.iter().map(|(a, p)| json!({
            "address": a,
            "next_hop": p.next_hop,
            "via_gateway": p.via_gateway,
            "interface": p.interface,
            "mac": p.mac,
            "error": p.error,
        })).collect::<Vec<_>>(),
        "backend_entries": entries,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    #[serde(default)]
    unload: bool,
}

async fn shutdown(AxState(ctx): AxState<Ctx>, body: Option<Json<ShutdownBody>>) -> ApiResult {
    let unload = body.map(|b| b.0.unload).unwrap_or(false);
    ctx.unload
        .store(unload, std::sync::atomic::Ordering::SeqCst);
    ctx.shutdown.notify_one();
    Ok(Json(json!({ "shutting_down": true, "unload": unload })))
}

async fn openapi() -> Json<Value> {
    Json(
        serde_json::from_str(include_str!("../openapi.json"))
            .expect("embedded openapi.json is valid"),
    )
}
