//! Hardening, round two: attacks on the release binary's budgets as an unauthenticated client
//! would mount them (loopback only, bounded in count and time). Each test prints its measured
//! figures (`--nocapture`) and asserts the bound that must hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, Server};

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An opted-in Pod CREATE with its own uid (so that no answer comes from the decision cache).
fn unique_review(i: usize) -> Vec<u8> {
    let mut r = common::fixture("reviews/bare-pod.json");
    r["request"]["uid"] = json!(format!("00000000-0000-0000-0000-{i:012}"));
    let pod = &mut r["request"]["object"];
    pod["metadata"]["labels"]["nixuv.io/inject"] = json!("true");
    pod["metadata"]["annotations"] = json!({"nixuv.io/python-deps": format!("pkg{}", i % 50)});
    serde_json::to_vec(&r).unwrap()
}

async fn metrics_text(server: &Server) -> String {
    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    reqwest::Client::new().get(url).send().await.unwrap().text().await.unwrap()
}

/// With stderr on a pipe nobody reads, a log line never blocks a request: admission goes on at
/// full speed, `/healthz` answers, and the lines that did not fit are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_never_stops_admission() {
    // Every admission line at debug: ~300 bytes a request.
    let server = Server::builder().separate_metrics().env("NIXUV_LOG", "debug").stall_logs().start();
    let client = server.h2();
    let n = 8000;
    let start = Instant::now();
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, url, ok) = (client.clone(), server.url("/mutate"), Arc::clone(&ok));
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let resp = client.post(&url).body(unique_review(i)).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["response"]["allowed"], true);
                ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.expect("admission stalled").unwrap();
    }
    let elapsed = start.elapsed();
    let health = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.metrics_addr.unwrap()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(health.status(), 200);
    let dropped = common::metric(&metrics_text(&server).await, "nixuv_log_lines_dropped_total");
    eprintln!(
        "unread log pipe: {} requests in {elapsed:?} ({:.0} req/s), {dropped} log lines dropped, /healthz 200",
        ok.load(std::sync::atomic::Ordering::Relaxed),
        n as f64 / elapsed.as_secs_f64()
    );
    assert!(dropped > 0.0, "more than the pipe and the buffer hold was logged, so some lines were dropped");
}

/// 64 connections from one client address each send 4 MB of a `/mutate` body that never ends:
/// the server holds at most its budget of request bytes (and one client at most a quarter of
/// it), answers the rest 503 at once, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_bodies_are_held_within_the_byte_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::builder().separate_metrics().arg("--max-connections").arg("256").start();
    let pid = server.child.id();
    let before = rss_kib(pid);
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let len = 4_000_000;
    let chunk = vec![b' '; 64 * 1024];
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut conn = crate::lifecycle::raw_tls_from(&server, b"http/1.1", Some(attacker)).await;
        let head = format!("POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: {len}\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        // All but the last bytes, as long as the server takes them.
        let mut sent = 0;
        let mut answer = Vec::new();
        while sent + chunk.len() < len {
            let write = tokio::time::timeout(Duration::from_millis(300), conn.write_all(&chunk)).await;
            if !matches!(write, Ok(Ok(()))) {
                break;
            }
            sent += chunk.len();
            // A refusal comes before the body is read: look for one now and then.
            if sent % (1 << 20) < chunk.len() {
                let mut buf = [0u8; 512];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), conn.read(&mut buf)).await {
                    answer.extend_from_slice(&buf[..n]);
                    if n > 0 {
                        break;
                    }
                }
            }
        }
        let mut buf = [0u8; 512];
        if answer.is_empty() {
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), conn.read(&mut buf)).await {
                answer.extend_from_slice(&buf[..n]);
            }
        }
        if String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503") {
            refused += 1;
        }
        held.push(conn);
    }
    let during = rss_kib(pid);
    let text = metrics_text(&server).await;
    let buffered = common::metric(&text, "nixuv_request_bytes_buffered");
    let budget = common::metric(&text, "nixuv_request_bytes_budget");
    // Another client is served while the attack holds its share.
    let resp = server.h1().post(server.url("/mutate")).body(unique_review(1)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    eprintln!(
        "partial bodies: RSS {before} KiB -> {during} KiB with 64 x 4 MB bodies in flight; {refused} refused with 503; {buffered} of {budget} budget bytes held; another client served"
    );
    assert!(buffered <= budget / 4.0 + 1024.0, "one client held {buffered} of {budget}");
    assert!(refused >= 58, "{refused} of 64 refused");
    assert!(during < before + 64 * 1024, "RSS grew from {before} to {during} KiB");
    drop(held);
}

/// A connection holding a request that never completes (`body` of `len` bytes, 10 sent) from
/// `from`; None if the server refused it (closed at once).
async fn busy_connection(
    server: &Server,
    from: std::net::IpAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = crate::lifecycle::raw_tls_from(server, b"http/1.1", Some(from)).await;
    let head = "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n{\"apiVersi";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return None;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        _ => Some(conn),
    }
}

/// Connections that each hold a request that never completes are not idle, yet they cannot
/// lock fresh clients out: once stalled, they make room for new ones; and one client address
/// holds at most its share of connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_never_lock_fresh_clients_out() {
    let server = Server::builder()
        .separate_metrics()
        .args(&["--max-connections", "64", "--max-connections-per-client", "48"])
        .start();
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        if let Some(c) = busy_connection(&server, attacker).await {
            held.push(c);
        }
    }
    let text = metrics_text(&server).await;
    let open = common::metric(&text, "nixuv_connections");
    let rejected = common::metric(&text, "nixuv_connections_rejected_total");
    eprintln!("busy connections: one client opened 64 (cap 48): {open} open, {rejected} refused");
    // Past its share, a client's new connection takes the place of its longest-stalled one (the
    // first ones here have stalled by then) or is refused: never more than 48 open.
    assert!(open <= 48.0, "{open} open");
    // A second address takes the rest of the budget, with requests in flight too.
    let other: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    for _ in 0..16 {
        if let Some(c) = busy_connection(&server, other).await {
            held.push(c);
        }
    }
    assert_eq!(common::metric(&metrics_text(&server).await, "nixuv_connections"), 64.0, "the budget is full");
    // Once the attackers' requests have stalled, every fresh client is served.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut served = 0;
    for i in 0..12 {
        let client = server.fresh_client(&server.ca);
        let resp = client.post(server.url("/mutate")).body(unique_review(100 + i)).send().await;
        if resp.is_ok_and(|r| r.status() == 200) {
            served += 1;
        }
    }
    let evicted = common::metric(&metrics_text(&server).await, "nixuv_connections_evicted_total");
    eprintln!("busy connections: {served} of 12 fresh clients served; {evicted} stalled connections evicted");
    assert_eq!(served, 12);
    drop(held);
}

/// A List of 1,000 Pods (~550 KB), as the review's attack posted it.
fn big_list() -> String {
    let items: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"),
                "labels": {"nixuv.io/inject": "true"}, "annotations": {"nixuv.io/python-deps": format!("pkg{i}, rich")}},
                "spec": {"containers": [{"name": "app", "image": "python:3.12", "env": [{"name": "A", "value": "b".repeat(300)}]}]}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Previews render on threads of their own: with a single runtime worker, `/mutate` requests made
/// while large previews are rendering are answered long before them, and the latency of
/// `/mutate` under three loops of previews is printed beside its latency alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_never_hold_up_admission() {
    let server = Server::builder()
        .args(&["--worker-threads", "1", "--preview-concurrency", "3", "--preview-body-limit", "1048576"])
        .start();
    let list = Arc::new(big_list());
    let h2 = server.h2();
    let latencies = |n: usize| {
        let (client, url) = (h2.clone(), server.url("/mutate"));
        async move {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                let resp = client.post(&url).body(unique_review(i)).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                v.push(t.elapsed());
            }
            v.sort();
            (v[n / 2], v[n * 99 / 100])
        }
    };
    let alone = latencies(300).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let previews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..3 {
        let (client, url, list, stop, previews) =
            (server.h1(), server.url("/preview"), Arc::clone(&list), Arc::clone(&stop), Arc::clone(&previews));
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp =
                    client.post(&url).header("content-type", "application/json").body(list.to_string()).send().await;
                if resp.is_ok_and(|r| r.status() == 200) {
                    previews.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    // Wait until previews are rendering.
    let t = Instant::now();
    while previews.load(std::sync::atomic::Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let one_preview = t.elapsed();
    let loaded = latencies(300).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    eprintln!(
        "previews: /mutate p50/p99 alone {:?}/{:?}, with 3 preview loops {:?}/{:?} ({} previews of 1,000 Pods, the first in {one_preview:?})",
        alone.0, alone.1, loaded.0, loaded.1, previews.load(std::sync::atomic::Ordering::Relaxed)
    );
    // On the runtime's one worker, a /mutate behind a preview would wait for the whole preview.
    assert!(loaded.1 < one_preview, "a /mutate waited {:?}, about a preview's time ({one_preview:?})", loaded.1);
}
