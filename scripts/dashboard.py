#!/usr/bin/env python3
"""Writes metrics/grafana/tikv_raft_client.json: the Grafana dashboard of
the metrics this fork adds or changes, one row per layer (resolver, raft
client, raft service, PD client). Run `make dashboard` after changing a
panel; tests/process/prometheus.rs checks that every metric of
src/server/metrics.rs and components/pd_client/src/metrics.rs has a panel
and that every panel's query returns data from a real Prometheus scraping a
lab cluster."""

import json
import os

SEL = '{instance=~"$instance"}'


def sel(extra=""):
    """The instance selector, with `extra` matchers."""
    if extra:
        return '{instance=~"$instance", %s}' % extra
    return SEL


# (row title, [(panel title, unit, description, [(expr, legend)])])
ROWS = [
    ("Resolver", [
        ("Store resolutions", "ops",
         "Resolutions by outcome: success, failed, not_found (PD does not know the store), tombstone.",
         [("sum(rate(tikv_server_resolve_store_total%s[1m])) by (instance, type)" % SEL,
           "{{instance}} {{type}}")]),
        ("Resolve duration (p99)", "s",
         "Time from a resolve request to its answer; cached answers are fast, PD calls are not.",
         [("histogram_quantile(0.99, sum(rate(tikv_server_address_resolve_duration_secs_bucket%s[1m])) by (le, instance))" % SEL,
           "{{instance}}")]),
        ("PD GetStore calls by the resolver", "ops",
         "GetStore calls after single flight and caching: about one per store a minute when healthy.",
         [("sum(rate(tikv_server_resolve_pd_get_store_total%s[1m])) by (instance)" % SEL,
           "{{instance}}")]),
    ]),
    ("Raft client", [
        ("Stores not found in PD", "short",
         "Stores in a not-found episode (removed from PD, or not registered yet).",
         [("sum(tikv_server_raft_client_not_found_stores%s) by (instance)" % SEL,
           "{{instance}}")]),
        ("Not-found episode age", "s",
         "How long each store has been unknown to PD; alert TiKV_raft_client_store_not_found after 10m.",
         [("time() - max(tikv_server_raft_client_not_found_since_seconds%s) by (instance, store_id)" % SEL,
           "{{instance}} store {{store_id}}")]),
        ("Tombstone stores", "short",
         "Stores found tombstone: never connected to again, later messages refused.",
         [("sum(tikv_server_raft_client_tombstone_stores%s) by (instance)" % SEL,
           "{{instance}}")]),
        ("Regions still sending to removed stores", "short",
         "Per tombstoned or not-found store, regions whose messages to it were refused or reported: stale peers to remove (see /debug/raft_client).",
         [("max(tikv_server_raft_client_stale_regions%s) by (instance, store_id)" % SEL,
           "{{instance}} store {{store_id}}")]),
        ("Resolve verdicts per store", "ops",
         "The raft client's resolutions by verdict and store.",
         [("sum(rate(tikv_server_raft_client_resolve_total%s[1m])) by (instance, store_id, verdict)" % SEL,
           "{{instance}} store {{store_id}} {{verdict}}")]),
        ("Connection events per store", "ops",
         "connect, connected, failed, store_not_match, fallback, cancelled_retry.",
         [("sum(rate(tikv_server_raft_client_connection_total%s[1m])) by (instance, store_id, type)" % SEL,
           "{{instance}} store {{store_id}} {{type}}")]),
        ("Connection failures per store (per minute)", "short",
         "Failed calls and store-not-match per minute; alert TiKV_raft_client_reconnect_loop above 6 for 5m.",
         [("sum(increase(tikv_server_raft_client_connection_total%s[1m])) by (instance, store_id)" % sel('type=~"failed|store_not_match"'),
           "{{instance}} store {{store_id}}")]),
        ("Connection tasks", "short",
         "Live connection tasks (one per store and conn_id).",
         [("sum(tikv_server_raft_client_connections%s) by (instance)" % SEL,
           "{{instance}}")]),
        ("Messages reported unreachable", "ops",
         "Messages reported to raftstore instead of delivered, by reason and store.",
         [("sum(rate(tikv_server_report_failure_msg_total%s[1m])) by (instance, store_id, type)" % SEL,
           "{{instance}} store {{store_id}} {{type}}")]),
        ("Flushes", "ops",
         "flush: queues woken by flush; batch: batches written.",
         [("sum(rate(tikv_server_raft_message_flush_total%s[1m])) by (instance, reason)" % SEL,
           "{{instance}} {{reason}}")]),
    ]),
    ("Raft service", [
        ("Messages received", "ops",
         "Raft messages received, by call type.",
         [("sum(rate(tikv_server_raft_message_recv_total%s[1m])) by (instance, type)" % SEL,
           "{{instance}} {{type}}")]),
        ("Messages received by store", "ops",
         "Per source store (the source_store_id call header): a store that stops sending shows here.",
         [("sum(rate(tikv_raftstore_message_recv_by_store%s[1m])) by (instance, store)" % SEL,
           "{{instance}} from store {{store}}")]),
        ("Receive delay (p99)", "s",
         "Receiver's clock minus the batch's last_observed_time.",
         [("histogram_quantile(0.99, sum(rate(tikv_server_raft_message_duration_seconds_bucket%s[1m])) by (le, instance))" % sel('type="receive_delay"'),
           "{{instance}}")]),
    ]),
    ("PD client", [
        ("PD request duration (p99)", "s",
         "By method, retries included.",
         [("histogram_quantile(0.99, sum(rate(tikv_pd_request_duration_seconds_bucket%s[1m])) by (le, instance, type))" % SEL,
           "{{instance}} {{type}}")]),
        ("PD request failures", "ops",
         "By method and kind (store_not_found, store_tombstone, grpc, ...).",
         [("sum(rate(tikv_pd_request_failures_total%s[1m])) by (instance, type, kind)" % SEL,
           "{{instance}} {{type}} {{kind}}")]),
        ("PD reconnects", "ops",
         "Reconnects to the PD leader: try_connect, success, failure, cancel.",
         [("sum(rate(tikv_pd_reconnect_total%s[1m])) by (instance, type)" % SEL,
           "{{instance}} {{type}}")]),
    ]),
]

DS = {"type": "prometheus", "uid": "${datasource}"}


def dashboard():
    panels = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (ptitle, unit, desc, targets) in enumerate(row):
            panels.append({
                "id": pid,
                "type": "timeseries",
                "title": ptitle,
                "description": desc,
                "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "table", "placement": "right",
                                       "calcs": ["lastNotNull", "max"]},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(ord("A") + j), "datasource": DS, "expr": e,
                             "legendFormat": l, "interval": ""}
                            for j, (e, l) in enumerate(targets)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "title": "TiKV-Raft-Client",
        "uid": "tikv-raft-client",
        "description": "Store resolution and the raft client: not-found episodes, tombstone verdicts, reconnects, stale regions (the removed-store fork).",
        "tags": ["tikv", "raft-client"],
        "timezone": "browser",
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
             "query": "label_values(tikv_server_raft_client_connections, instance)",
             "definition": "label_values(tikv_server_raft_client_connections, instance)",
             "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
             "current": {}, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, "metrics", "grafana", "tikv_raft_client.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
