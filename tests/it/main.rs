//! Integration tests: the real `nixuv` binary, spoken to over TLS.
mod argo;
mod check;
mod common;
mod deploy;
mod fuzz;
mod fuzz_store;
mod hostile;
mod images;
mod kubeapi;
mod lifecycle;
mod materialize;
mod preview;
mod properties;
mod router;
mod store;
mod store_guard;
mod webhook;
