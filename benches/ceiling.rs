//! The ceiling for load runs (`make bench`): the same TLS set-up as `nixuv serve` (rustls with
//! nixuv's server config and certificate store, ECDSA certs, ALPN h2 + http/1.1, the same
//! hyper-util HTTP/1.1 + HTTP/2 builder) answering every POST with a constant AdmissionReview
//! after reading the body, with no parsing and no decision. nixuv / ceiling is then the cost of
//! nixuv's own work.
//!
//! `cargo bench --bench ceiling -- --serve ADDR CERT KEY [--response FILE]` serves until killed,
//! answering with FILE's bytes if given (the bench passes nixuv's own response, to measure what the
//! size of a real answer costs); without `--serve` it exits at once (so `cargo bench` and
//! `cargo test --all-targets` pass over it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RESPONSE: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","allowed":true}}"#;

async fn constant(body: Bytes, response: Bytes) -> ([(&'static str, &'static str); 1], Bytes) {
    drop(body);
    ([("content-type", "application/json")], response)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--serve") else { return };
    let (addr, cert, key) = (&args[i + 1], &args[i + 2], &args[i + 3]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = nixuv::server::tls::CertStore::load(cert.as_ref(), key.as_ref()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(nixuv::server::tls::server_config(store).unwrap()));
        let response = match args.iter().position(|a| a == "--response") {
            Some(j) => Bytes::from(std::fs::read(&args[j + 1]).unwrap()),
            None => Bytes::from_static(RESPONSE.as_bytes()),
        };
        let app = Router::new().route("/mutate", post(move |body: Bytes| constant(body, response.clone())));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        eprintln!("ceiling listening on {}", listener.local_addr().unwrap());
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (acceptor, builder, app) = (acceptor.clone(), builder.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app)).await;
            });
        }
    });
}
