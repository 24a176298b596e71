//! PD client metrics, named like TiKV's `tikv_pd_*`.

use lazy_static::lazy_static;
use prometheus::{
    exponential_buckets, register_histogram_vec, register_int_counter_vec, HistogramVec,
    IntCounterVec,
};

lazy_static! {
    /// Duration of PD requests by method, including retries.
    pub static ref PD_REQUEST_HISTOGRAM_VEC: HistogramVec = register_histogram_vec!(
        "tikv_pd_request_duration_seconds",
        "Bucketed histogram of PD requests duration",
        &["type"],
        exponential_buckets(0.0005, 2.0, 20).unwrap()
    )
    .unwrap();
    /// Failed PD requests by method and error kind.
    pub static ref PD_REQUEST_FAILURE_COUNTER_VEC: IntCounterVec = register_int_counter_vec!(
        "tikv_pd_request_failures_total",
        "Total number of failed PD requests",
        &["type", "kind"]
    )
    .unwrap();
    /// Reconnects to the PD leader: try_connect, cancel, success, failure.
    pub static ref PD_RECONNECT_COUNTER_VEC: IntCounterVec = register_int_counter_vec!(
        "tikv_pd_reconnect_total",
        "Total number of PD reconnections",
        &["type"]
    )
    .unwrap();
}

/// Registers every metric of this module now, so `/metrics` lists them all
/// from the start instead of after first use (the reconnect outcomes with
/// their series at 0).
pub fn init() {
    lazy_static::initialize(&PD_REQUEST_HISTOGRAM_VEC);
    lazy_static::initialize(&PD_REQUEST_FAILURE_COUNTER_VEC);
    lazy_static::initialize(&PD_RECONNECT_COUNTER_VEC);
    // Every reconnect outcome from 0, so `rate`/`increase` (and an alert on
    // them) see the first reconnect, not only the second.
    for t in ["try_connect", "cancel", "success", "failure"] {
        PD_RECONNECT_COUNTER_VEC.with_label_values(&[t]);
    }
}
