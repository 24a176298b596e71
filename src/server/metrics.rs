//! Metrics of the resolver and the raft client, named like TiKV's.

use lazy_static::lazy_static;
use prometheus::*;

lazy_static! {
    /// Resolutions by outcome: success, failed, tombstone, not_found.
    pub static ref RESOLVE_STORE_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_resolve_store_total",
        "Total number of resolving store",
        &["type"]
    )
    .unwrap();
    /// Time from `resolve` to the callback.
    pub static ref ADDRESS_RESOLVE_HISTOGRAM: Histogram = register_histogram!(
        "tikv_server_address_resolve_duration_secs",
        "Duration of resolving store address",
        exponential_buckets(0.0001, 2.0, 20).unwrap()
    )
    .unwrap();
    /// PD calls the resolver made (after single flight and caching).
    pub static ref RESOLVE_PD_CALL_COUNTER: IntCounter = register_int_counter!(
        "tikv_server_resolve_pd_get_store_total",
        "Total number of GetStore calls made by the store resolver"
    )
    .unwrap();
    /// Raft message batches flushed to the wire, by kind.
    pub static ref RAFT_MESSAGE_FLUSH_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_raft_message_flush_total",
        "Total number of raft messages flushed immediately",
        &["reason"]
    )
    .unwrap();
    /// Messages reported unreachable, by reason and store. The reason's
    /// label is `type`, as upstream's (tikv/tikv `src/server/metrics.rs`),
    /// so upstream's alert on `{type="unreachable"}` works unchanged.
    pub static ref REPORT_FAILURE_MSG_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_report_failure_msg_total",
        "Total number of reporting failure messages",
        &["type", "store_id"]
    )
    .unwrap();
    /// Connection events per store: connect, connected, failed,
    /// store_not_match, fallback, cancelled_retry.
    pub static ref RAFT_CLIENT_CONNECTION_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_raft_client_connection_total",
        "Total number of raft client connection events",
        &["type", "store_id"]
    )
    .unwrap();
    /// Live connection tasks of all raft clients.
    pub static ref RAFT_CLIENT_CONNECTIONS: IntGauge = register_int_gauge!(
        "tikv_server_raft_client_connections",
        "Number of raft client connection tasks"
    )
    .unwrap();
    /// Resolve attempts made by the raft client, by verdict and store:
    /// success, failed, not_found, tombstone (once per store: the verdict).
    pub static ref RAFT_CLIENT_RESOLVE_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_raft_client_resolve_total",
        "Total number of raft client resolve attempts by verdict",
        &["verdict", "store_id"]
    )
    .unwrap();
    /// Per store in a not-found episode: when the episode began (Unix
    /// seconds). The series exists only while the episode lasts, so an
    /// alert on it resolves when the store is found or found tombstone.
    pub static ref RAFT_CLIENT_NOT_FOUND_SINCE: IntGaugeVec = register_int_gauge_vec!(
        "tikv_server_raft_client_not_found_since_seconds",
        "Start of the store's not-found episode, in seconds since the Unix epoch",
        &["store_id"]
    )
    .unwrap();
    /// Per tombstoned or not-found store: regions whose messages to it were
    /// refused or reported (the stale peers an operator should remove),
    /// as many as the raft client keeps (see `STALE_REGIONS_PER_STORE`).
    pub static ref RAFT_CLIENT_STALE_REGIONS: IntGaugeVec = register_int_gauge_vec!(
        "tikv_server_raft_client_stale_regions",
        "Regions still sending raft messages to a tombstoned or not-found store",
        &["store_id"]
    )
    .unwrap();
    /// Stores in the raft client's tombstone set.
    pub static ref RAFT_CLIENT_TOMBSTONE_STORES: IntGauge = register_int_gauge!(
        "tikv_server_raft_client_tombstone_stores",
        "Number of stores the raft client treats as tombstone"
    )
    .unwrap();
    /// Stores in a not-found episode.
    pub static ref RAFT_CLIENT_NOT_FOUND_STORES: IntGauge = register_int_gauge!(
        "tikv_server_raft_client_not_found_stores",
        "Number of stores the raft client is waiting on after a not-found answer"
    )
    .unwrap();
    /// Messages received by the raft service.
    pub static ref RAFT_SERVICE_RECV_COUNTER: IntCounterVec = register_int_counter_vec!(
        "tikv_server_raft_message_recv_total",
        "Total number of raft messages received",
        &["type"]
    )
    .unwrap();
    /// Messages received per source store (the `source_store_id` call
    /// header); upstream keeps it in raftstore's metrics under this name.
    pub static ref MESSAGE_RECV_BY_STORE: IntCounterVec = register_int_counter_vec!(
        "tikv_raftstore_message_recv_by_store",
        "Messages received by store",
        &["store"]
    )
    .unwrap();
    /// Raft message durations by type; `receive_delay` is the receiver's
    /// clock minus the batch's `last_observed_time`.
    pub static ref RAFT_MESSAGE_DURATION_VEC: HistogramVec = register_histogram_vec!(
        "tikv_server_raft_message_duration_seconds",
        "Duration of raft messages.",
        &["type"],
        exponential_buckets(0.00001, 2.0, 26).unwrap()
    )
    .unwrap();
}

// Series of the hot path's counters, resolved once: a label lookup hashes
// the labels and takes the vector's lock, too dear for every message or
// batch (a `perf` profile of conn-num 4 put `with_label_values` at 2% of
// the process). Each is created on first use, as the lookup did, so a
// series is still born with its first event.
lazy_static! {
    /// `tikv_server_raft_message_flush_total{reason="batch"}`: writes to a
    /// `BatchRaft` call.
    pub static ref RAFT_MESSAGE_FLUSH_BATCH: IntCounter =
        RAFT_MESSAGE_FLUSH_COUNTER.with_label_values(&["batch"]);
    /// `tikv_server_raft_message_flush_total{reason="raft"}`: writes to a
    /// `Raft` call.
    pub static ref RAFT_MESSAGE_FLUSH_RAFT: IntCounter =
        RAFT_MESSAGE_FLUSH_COUNTER.with_label_values(&["raft"]);
    /// `tikv_server_raft_message_flush_total{reason="flush"}`: queues
    /// woken by `flush`.
    pub static ref RAFT_MESSAGE_FLUSH_FLUSH: IntCounter =
        RAFT_MESSAGE_FLUSH_COUNTER.with_label_values(&["flush"]);
    /// `tikv_server_raft_message_recv_total{type="ok"}`: messages handed
    /// to the router.
    pub static ref RAFT_SERVICE_RECV_OK: IntCounter =
        RAFT_SERVICE_RECV_COUNTER.with_label_values(&["ok"]);
}

/// Registers every metric of this module now, so `/metrics` lists them all
/// from the start instead of after first use.
pub fn init() {
    lazy_static::initialize(&RESOLVE_STORE_COUNTER);
    lazy_static::initialize(&ADDRESS_RESOLVE_HISTOGRAM);
    lazy_static::initialize(&RESOLVE_PD_CALL_COUNTER);
    lazy_static::initialize(&RAFT_MESSAGE_FLUSH_COUNTER);
    lazy_static::initialize(&REPORT_FAILURE_MSG_COUNTER);
    lazy_static::initialize(&RAFT_CLIENT_CONNECTION_COUNTER);
    lazy_static::initialize(&RAFT_CLIENT_CONNECTIONS);
    lazy_static::initialize(&RAFT_CLIENT_RESOLVE_COUNTER);
    lazy_static::initialize(&RAFT_CLIENT_TOMBSTONE_STORES);
    lazy_static::initialize(&RAFT_CLIENT_NOT_FOUND_STORES);
    lazy_static::initialize(&RAFT_CLIENT_NOT_FOUND_SINCE);
    lazy_static::initialize(&RAFT_CLIENT_STALE_REGIONS);
    lazy_static::initialize(&RAFT_SERVICE_RECV_COUNTER);
    lazy_static::initialize(&MESSAGE_RECV_BY_STORE);
    lazy_static::initialize(&RAFT_MESSAGE_DURATION_VEC);
}

/// Connection event types of `tikv_server_raft_client_connection_total`.
pub const CONNECTION_EVENTS: [&str; 6] = [
    "connect",
    "connected",
    "failed",
    "store_not_match",
    "fallback",
    "cancelled_retry",
];
/// Verdicts of `tikv_server_raft_client_resolve_total`.
pub const RESOLVE_VERDICTS: [&str; 4] = ["success", "failed", "not_found", "tombstone"];
/// Reasons (`type`) of `tikv_server_report_failure_msg_total` this client
/// reports.
pub const REPORT_REASONS: [&str; 8] = [
    "tombstone",
    "unreachable",
    "stopped",
    "send",
    "not_found",
    "resolve",
    "oversize",
    "store_not_match",
];

/// Creates a store's per-store counter series at 0 when its connection
/// task starts: Prometheus's `increase` cannot see a series' first event
/// when the series is born holding it, so an alert on the first
/// store-not-match or the tombstone verdict would miss it.
pub fn touch_store_series(store_id: u64) {
    let s = store_id.to_string();
    for t in CONNECTION_EVENTS {
        RAFT_CLIENT_CONNECTION_COUNTER.with_label_values(&[t, &s]);
    }
    for v in RESOLVE_VERDICTS {
        RAFT_CLIENT_RESOLVE_COUNTER.with_label_values(&[v, &s]);
    }
    for r in REPORT_REASONS {
        REPORT_FAILURE_MSG_COUNTER.with_label_values(&[r, &s]);
    }
}
