//! Real servers for Weft's tests and benchmark.
//!
//! Each `serve_*` function runs a server on an already-bound listener until its
//! task is dropped; [`in_netns`] runs any of them inside a network namespace.

pub mod curl;
pub mod grpc;
pub mod http;
pub mod netns;
pub mod ports;
pub mod proxy;
pub mod scrape;
pub mod tcp;

pub mod pb {
    tonic::include_proto!("weft.testkit");
}
