//! nixuv: a Kubernetes mutating admission webhook that gives Pods nixpkgs and Python dependencies
//! through an injected init container and shared stores.
#![forbid(unsafe_code)]

pub mod certs;
pub mod check;
pub mod claims;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ecosystem;
pub mod envid;
pub mod envspec;
pub mod imagebuild;
pub mod imagegc;
pub mod imagestore;
pub mod inject;
pub mod keys;
pub mod logging;
pub mod managed;
pub mod materialize;
pub mod names;
pub mod plan;
pub mod preview;
pub mod publish;
pub mod resolve;
pub mod review;
pub mod server;
pub mod toolenv;
pub mod values;
