//! tikv-server built with `--features failpoints`: TiKV's failpoint
//! endpoints on the status server and the `FAILPOINTS` variable at start.

use std::process::Command;

use test_lab::http::request;
use test_lab::process::LabProcess;

#[test]
fn failpoint_endpoints_and_env() {
    let pd = test_pd::Server::single();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tikv-server"));
    cmd.args(["--pd", &pd.endpoints()[0], "--addr", "127.0.0.1:0"])
        .args(["--status-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--log-file")
        .arg(dir.path().join("tikv.log"))
        .env("FAILPOINTS", "raft_client_before_take_batch=sleep(1)");
    let p = LabProcess::spawn("tikv-server", cmd, &dir.path().join("stderr")).unwrap();
    let base = format!("http://{}/fail", p.field("status_addr"));

    // Read from FAILPOINTS at start.
    let (code, list) = request("GET", &base, "").unwrap();
    assert_eq!(code, 200);
    assert!(
        list.contains("raft_client_before_take_batch=sleep(1)"),
        "{}",
        list
    );

    let name = format!("{}/pd_client_get_store", base);
    let (code, body) = request("PUT", &name, "return(timeout)").unwrap();
    assert_eq!(code, 200, "{}", body);
    assert!(
        body.contains("Added fail point with name: pd_client_get_store"),
        "{}",
        body
    );
    let (_, list) = request("GET", &base, "").unwrap();
    assert!(
        list.contains("pd_client_get_store=return(timeout)"),
        "{}",
        list
    );

    // Bad input: no actions, no name, an action fail cannot parse.
    assert_eq!(request("PUT", &name, "").unwrap().0, 422);
    assert_eq!(
        request("PUT", &format!("{}/", base), "return").unwrap().0,
        422
    );
    assert_eq!(request("PUT", &name, "bogus(").unwrap().0, 400);
    assert_eq!(request("POST", &name, "return").unwrap().0, 405);

    let (code, body) = request("DELETE", &name, "").unwrap();
    assert_eq!(code, 200, "{}", body);
    let (_, list) = request("GET", &base, "").unwrap();
    assert!(!list.contains("pd_client_get_store"), "{}", list);
    assert!(list.contains("raft_client_before_take_batch"), "{}", list);
}

/// `store_ident.json` is written atomically: a crash between writing the
/// identity and renaming it into place (`store_ident_before_rename=panic`)
/// leaves no identity, never a torn one, and the next start registers as
/// on a first start and saves a whole identity.
#[test]
fn a_crash_while_saving_the_identity_leaves_none() {
    let pd = test_pd::Server::single();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |failpoints: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tikv-server"));
        cmd.args(["--pd", &pd.endpoints()[0], "--addr", "127.0.0.1:0"])
            .args(["--status-addr", ""])
            .arg("--data-dir")
            .arg(&data)
            .arg("--log-file")
            .arg(dir.path().join("tikv.log"));
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        cmd
    };
    let cmd = start(Some("store_ident_before_rename=panic"));
    let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(30)).unwrap();
    assert_ne!(f.code, Some(0), "the store crashed: {}", f.stderr);
    assert!(
        f.stderr.contains("store_ident_before_rename"),
        "{}",
        f.stderr
    );
    let ident = data.join(server::ident::IDENT_FILE);
    assert!(
        !ident.exists(),
        "a crash before the rename left {}: {:?}",
        ident.display(),
        std::fs::read_to_string(&ident)
    );
    assert_eq!(server::ident::StoreIdent::load(&data), Ok(None));

    let p = LabProcess::spawn("tikv-server", start(None), &dir.path().join("stderr")).unwrap();
    let id = p.ready["store_id"].as_u64().unwrap();
    let saved = server::ident::StoreIdent::load(&data).unwrap().unwrap();
    assert_eq!((saved.store_id, saved.cluster_id), (id, pd.cluster_id()));
}
