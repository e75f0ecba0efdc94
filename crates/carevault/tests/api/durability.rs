//! kill -9 during concurrent writes: every acknowledged write survives, no partial transaction shows.

use crate::harness::{Server, send};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;

#[tokio::test]
async fn kill_dash_nine_loses_no_acknowledged_write() {
    let mut s = Server::start().await;
    let server = Arc::new(std::mem::replace(&mut s.http, reqwest::Client::new()));
    let acked_creates = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_tx = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, base, token) = (server.clone(), s.base.clone(), s.token.clone());
        let (acked_creates, acked_tx, stop) =
            (acked_creates.clone(), acked_tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            // Bounded: at most 400 writes per worker.
            while !stop.load(Ordering::Relaxed) && n < 400 {
                n += 1;
                if n.is_multiple_of(3) {
                    let marker = format!("Tx{w}x{n}");
                    let entries: Vec<_> = (0..5)
                        .map(|_| json!({"resource": {"resourceType": "Patient", "name": [{"family": marker}]}, "request": {"method": "POST", "url": "Patient"}}))
                        .collect();
                    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                    let r = http.post(&base).bearer_auth(&token).header("content-type", "application/fhir+json").body(b.to_string()).send().await;
                    if let Ok(r) = r && r.status() == 200 && r.bytes().await.is_ok() {
                        acked_tx.lock().await.push(marker);
                    }
                } else {
                    let p = json!({"resourceType": "Patient", "name": [{"family": format!("W{w}n{n}")}]});
                    let r = http.post(format!("{base}/Patient")).bearer_auth(&token).header("content-type", "application/fhir+json").body(p.to_string()).send().await;
                    if let Ok(r) = r && r.status() == 201 && let Ok(b) = r.json::<serde_json::Value>().await {
                        acked_creates.lock().await.push(b["id"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }));
    }
    // Let writes pile up, then kill -9 mid-stream.
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if acked_creates.lock().await.len() > 150 {
            break;
        }
    }
    s.crash();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let creates = acked_creates.lock().await.clone();
    let txs = acked_tx.lock().await.clone();
    assert!(
        creates.len() > 20,
        "the load did not get going: {}",
        creates.len()
    );

    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let mut s2 = Server::spawn(dir, &[]);
    s2.authenticate("system/*.*").await;
    for id in &creates {
        let (st, _, _) = send(s2.get(&format!("Patient/{id}"))).await;
        assert_eq!(st, 200, "acknowledged create Patient/{id} lost");
    }
    for m in &txs {
        let (_, _, b) = send(s2.get(&format!("Patient?family:exact={m}&_summary=count"))).await;
        assert_eq!(b["total"], 5, "acknowledged transaction {m} not complete");
    }
    // No transaction of any worker is partially visible, acknowledged or not.
    let (_, _, all) = send(s2.get("Patient?family=Tx&_count=1000&_elements=name")).await;
    let mut by_marker = std::collections::HashMap::<String, u32>::new();
    for e in all["entry"].as_array().into_iter().flatten() {
        *by_marker
            .entry(
                e["resource"]["name"][0]["family"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
    }
    for (m, n) in by_marker {
        assert_eq!(n, 5, "transaction {m} is partially visible");
    }
}
