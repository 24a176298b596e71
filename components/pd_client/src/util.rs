//! Classification of PD's answers and endpoint parsing. Pure functions, so
//! every shape is unit-tested without a server.

use grpcio::{RpcStatus, RpcStatusCode};
use kvproto::metapb;
use kvproto::pdpb::{ErrorType, GetStoreResponse, ResponseHeader};

use crate::errors::{other, Error, Result};

/// Turns `http://host:port`, `https://host:port` or `host:port` into
/// `host:port`, rejecting empty or malformed endpoints.
pub fn normalize_endpoint(ep: &str) -> Result<String> {
    let t = ep.trim();
    let rest = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
        .unwrap_or(t)
        .trim_end_matches('/');
    if rest.is_empty() {
        return Err(other(format!("invalid PD endpoint {:?}: empty", ep)));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| other(format!("invalid PD endpoint {:?}: no port", ep)))?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(other(format!("invalid PD endpoint {:?}: bad host", ep)));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(rest.to_owned()),
        _ => Err(other(format!("invalid PD endpoint {:?}: bad port", ep))),
    }
}

/// If `msg` is exactly PD's "invalid store ID <id>, not found", the id.
pub fn parse_store_not_found(msg: &str) -> Option<u64> {
    let id = msg
        .trim()
        .strip_prefix("invalid store ID ")?
        .strip_suffix(", not found")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Whether `msg` is PD's not-found answer for the store the request asked
/// about. Store id 0 never qualifies: PD never allocates it, so "not
/// registered yet" cannot apply (PD answers it with the same text).
fn is_not_found_of(store_id: Option<u64>, msg: &str) -> Option<u64> {
    match (store_id, parse_store_not_found(msg)) {
        (Some(want), Some(got)) if want == got && want != 0 => Some(want),
        _ => None,
    }
}

/// The typed error for a gRPC status PD returned for store `store_id`'s
/// request: old PD answers a missing store with 2-UNKNOWN.
pub fn status_error(store_id: Option<u64>, status: RpcStatus) -> Error {
    if status.code() == RpcStatusCode::UNKNOWN {
        if let Some(id) = is_not_found_of(store_id, status.message()) {
            return Error::StoreNotFound(id);
        }
    }
    Error::Grpc(grpcio::Error::RpcFailure(status))
}

/// Checks a response header: its cluster id (when set) must be ours, and its
/// error is typed. `store_id` is the store the request asked about, if any.
pub fn check_resp_header(
    header: &ResponseHeader,
    cluster_id: u64,
    store_id: Option<u64>,
) -> Result<()> {
    if header.get_cluster_id() != 0 && cluster_id != 0 && header.get_cluster_id() != cluster_id {
        return Err(other(format!(
            "PD response cluster_id mismatch, want {}, got {}",
            cluster_id,
            header.get_cluster_id()
        )));
    }
    if !header.has_error() {
        return Ok(());
    }
    let err = header.get_error();
    let msg = err.get_message();
    match err.get_field_type() {
        ErrorType::OK => Ok(()),
        ErrorType::NOT_BOOTSTRAPPED => Err(Error::ClusterNotBootstrapped(cluster_id)),
        ErrorType::ALREADY_BOOTSTRAPPED => Err(Error::ClusterBootstrapped(cluster_id)),
        ErrorType::INCOMPATIBLE_VERSION => Err(Error::Incompatible),
        ErrorType::STORE_TOMBSTONE => Err(Error::StoreTombstone(msg.to_owned())),
        ErrorType::REGION_NOT_FOUND => Err(Error::RegionNotFound(vec![])),
        ErrorType::UNKNOWN => match is_not_found_of(store_id, msg) {
            Some(id) => Err(Error::StoreNotFound(id)),
            None => Err(other(format!("PD error UNKNOWN: {}", msg))),
        },
        t => Err(other(format!("PD error {:?}: {}", t, msg))),
    }
}

/// The verdict for a GetStore answer about `store_id`.
///
/// | answer | verdict |
/// |---|---|
/// | store, state Up/Offline | `Ok(store)` |
/// | store, state Tombstone; header STORE_TOMBSTONE | `StoreTombstone` |
/// | status 2-UNKNOWN or header UNKNOWN "invalid store ID <store_id>, not found" | `StoreNotFound(store_id)` |
/// | the same text about another id, or any other text | `Other` / `Grpc` |
/// | a store with another id, or no store | `Other` |
pub fn classify_get_store(
    store_id: u64,
    cluster_id: u64,
    resp: std::result::Result<GetStoreResponse, grpcio::Error>,
) -> Result<metapb::Store> {
    let mut resp = match resp {
        Ok(r) => r,
        Err(grpcio::Error::RpcFailure(s)) => return Err(status_error(Some(store_id), s)),
        Err(e) => return Err(Error::Grpc(e)),
    };
    check_resp_header(resp.get_header(), cluster_id, Some(store_id))?;
    if !resp.has_store() {
        return Err(other(format!(
            "PD returned no store for store {}",
            store_id
        )));
    }
    let store = resp.take_store();
    if store.get_id() != store_id {
        return Err(other(format!(
            "PD returned store {} for requested store {}",
            store.get_id(),
            store_id
        )));
    }
    if store.get_state() == metapb::StoreState::Tombstone {
        return Err(Error::StoreTombstone(format!(
            "store {} state Tombstone node_state {:?}",
            store.get_id(),
            store.get_node_state()
        )));
    }
    Ok(store)
}

/// Whether a gRPC failure is transport or leadership, worth a reconnect and
/// a retry: UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, a reset stream, or a
/// "not leader" answer.
pub fn is_retryable(err: &grpcio::Error) -> bool {
    match err {
        grpcio::Error::RpcFailure(s) => {
            matches!(
                s.code(),
                RpcStatusCode::UNAVAILABLE
                    | RpcStatusCode::DEADLINE_EXCEEDED
                    | RpcStatusCode::CANCELLED
            ) || s.message().contains("not leader")
        }
        grpcio::Error::RpcFinished(_) | grpcio::Error::RemoteStopped => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvproto::pdpb;

    fn status(code: RpcStatusCode, msg: &str) -> grpcio::Error {
        grpcio::Error::RpcFailure(RpcStatus::with_message(code, msg.to_owned()))
    }

    fn header_err(t: ErrorType, msg: &str) -> GetStoreResponse {
        let mut r = GetStoreResponse::default();
        let mut e = pdpb::Error::default();
        e.set_field_type(t);
        e.set_message(msg.to_owned());
        r.mut_header().set_error(e);
        r.mut_header().set_cluster_id(1);
        r
    }

    fn store_resp(id: u64, state: metapb::StoreState) -> GetStoreResponse {
        let mut r = GetStoreResponse::default();
        r.mut_header().set_cluster_id(1);
        r.mut_store().set_id(id);
        r.mut_store().set_address("127.0.0.1:20160".into());
        r.mut_store().set_state(state);
        r
    }

    #[derive(Debug, PartialEq)]
    enum V {
        Ok,
        Tombstone,
        NotFound(u64),
        Other,
        Grpc,
        NotBootstrapped,
    }

    fn verdict(r: Result<metapb::Store>) -> V {
        match r {
            Ok(_) => V::Ok,
            Err(Error::StoreTombstone(_)) => V::Tombstone,
            Err(Error::StoreNotFound(id)) => V::NotFound(id),
            Err(Error::Other(_)) => V::Other,
            Err(Error::Grpc(_)) => V::Grpc,
            Err(Error::ClusterNotBootstrapped(_)) => V::NotBootstrapped,
            Err(e) => panic!("unexpected {:?}", e),
        }
    }

    #[test]
    fn get_store_verdict_table() {
        use metapb::StoreState::*;
        let unknown = RpcStatusCode::UNKNOWN;
        let cases: Vec<(
            &str,
            std::result::Result<GetStoreResponse, grpcio::Error>,
            V,
        )> = vec![
            ("up", Ok(store_resp(6365, Up)), V::Ok),
            ("offline", Ok(store_resp(6365, Offline)), V::Ok),
            (
                "tombstone state",
                Ok(store_resp(6365, Tombstone)),
                V::Tombstone,
            ),
            (
                "header STORE_TOMBSTONE",
                Ok(header_err(
                    ErrorType::STORE_TOMBSTONE,
                    "store 6365 is tombstone",
                )),
                V::Tombstone,
            ),
            (
                "old PD status UNKNOWN",
                Err(status(unknown, "invalid store ID 6365, not found")),
                V::NotFound(6365),
            ),
            (
                "new PD header UNKNOWN",
                Ok(header_err(
                    ErrorType::UNKNOWN,
                    "invalid store ID 6365, not found",
                )),
                V::NotFound(6365),
            ),
            (
                "not found for another store id (status)",
                Err(status(unknown, "invalid store ID 7, not found")),
                V::Grpc,
            ),
            (
                "not found for another store id (header)",
                Ok(header_err(
                    ErrorType::UNKNOWN,
                    "invalid store ID 7, not found",
                )),
                V::Other,
            ),
            (
                "region not found",
                Ok(header_err(ErrorType::UNKNOWN, "region 7 not found")),
                V::Other,
            ),
            (
                "leader not found",
                Err(status(unknown, "leader not found")),
                V::Grpc,
            ),
            (
                "cluster not found",
                Ok(header_err(ErrorType::UNKNOWN, "cluster 1 not found")),
                V::Other,
            ),
            (
                "not found text with another status code",
                Err(status(
                    RpcStatusCode::NOT_FOUND,
                    "invalid store ID 6365, not found",
                )),
                V::Grpc,
            ),
            (
                "prefix garbage",
                Ok(header_err(
                    ErrorType::UNKNOWN,
                    "x invalid store ID 6365, not found",
                )),
                V::Other,
            ),
            (
                "suffix garbage",
                Ok(header_err(
                    ErrorType::UNKNOWN,
                    "invalid store ID 6365, not found yet",
                )),
                V::Other,
            ),
            (
                "zero store id",
                Ok(header_err(ErrorType::UNKNOWN, "invalid zero store id")),
                V::Other,
            ),
            (
                "unavailable",
                Err(status(RpcStatusCode::UNAVAILABLE, "not leader")),
                V::Grpc,
            ),
            (
                "not bootstrapped",
                Ok(header_err(ErrorType::NOT_BOOTSTRAPPED, "not bootstrapped")),
                V::NotBootstrapped,
            ),
            (
                "unknown error type shape",
                Ok(header_err(
                    ErrorType::DATA_COMPACTED,
                    "invalid store ID 6365, not found",
                )),
                V::Other,
            ),
            (
                "wrong store id returned",
                Ok(store_resp(6366, Up)),
                V::Other,
            ),
            (
                "no store returned",
                Ok(GetStoreResponse::default()),
                V::Other,
            ),
        ];
        for (name, resp, want) in cases {
            assert_eq!(verdict(classify_get_store(6365, 1, resp)), want, "{}", name);
        }
        // Store id 0 with PD's own answer for it, in both generations.
        let zero = "invalid store ID 0, not found";
        assert_eq!(
            verdict(classify_get_store(
                0,
                1,
                Ok(header_err(ErrorType::UNKNOWN, zero))
            )),
            V::Other
        );
        assert_eq!(
            verdict(classify_get_store(
                0,
                1,
                Err(status(RpcStatusCode::UNKNOWN, zero))
            )),
            V::Grpc
        );
    }

    #[test]
    fn cluster_id_mismatch_in_header_is_other() {
        let mut r = store_resp(1, metapb::StoreState::Up);
        r.mut_header().set_cluster_id(2);
        assert_eq!(verdict(classify_get_store(1, 1, Ok(r))), V::Other);
    }

    #[test]
    fn parse_not_found() {
        assert_eq!(
            parse_store_not_found("invalid store ID 6365, not found"),
            Some(6365)
        );
        assert_eq!(
            parse_store_not_found(" invalid store ID 1, not found "),
            Some(1)
        );
        for bad in [
            "invalid store ID , not found",
            "invalid store ID -1, not found",
            "invalid store ID 1a, not found",
            "invalid store ID 99999999999999999999999, not found",
            "store 1 not found",
            "",
        ] {
            assert_eq!(parse_store_not_found(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(normalize_endpoint("pd-0:2379/").unwrap(), "pd-0:2379");
        for bad in [
            "",
            "   ",
            "127.0.0.1",
            "127.0.0.1:",
            ":2379",
            "h:0",
            "h:99999",
            "http://",
            "a b:1",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn retryable() {
        assert!(is_retryable(&status(RpcStatusCode::UNAVAILABLE, "")));
        assert!(is_retryable(&status(RpcStatusCode::DEADLINE_EXCEEDED, "")));
        assert!(is_retryable(&status(RpcStatusCode::CANCELLED, "")));
        assert!(is_retryable(&status(RpcStatusCode::UNKNOWN, "not leader")));
        assert!(!is_retryable(&status(
            RpcStatusCode::UNKNOWN,
            "invalid store ID 1, not found"
        )));
        assert!(!is_retryable(&status(
            RpcStatusCode::FAILED_PRECONDITION,
            "mismatch cluster id"
        )));
    }
}
