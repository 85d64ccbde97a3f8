//! Micro-benchmarks of the binding upgrade's framing (`wire::encode_frame` / `decode_frame`):
//! what every proxied connection pays in CPU for its ConnRequest and ConnResponse, apart from the
//! network round trip. Run with `cargo bench --bench wire`.

use std::collections::HashMap;
use std::hint::black_box;

use bindgate::wire::{self, ConnRequest, ConnResponse, Notice, PodIdentity};
use criterion::{Criterion, criterion_group, criterion_main};

/// A request as bindgate sends it: no pod identity.
fn plain_request() -> ConnRequest {
    ConnRequest {
        host: "orders.default".into(),
        port: 5432,
        pod_identity: None,
    }
}

/// A request carrying a pod identity with a few annotations (the larger shape the protocol allows).
fn request_with_identity() -> ConnRequest {
    let annotations: HashMap<String, String> = (0..4)
        .map(|i| (format!("example.com/key-{i}"), format!("value-{i}")))
        .collect();
    ConnRequest {
        host: "orders.default".into(),
        port: 5432,
        pod_identity: Some(PodIdentity {
            uid: "0f4c1a52-3b8e-4c1e-9d7a-2b1f6e8c9a10".into(),
            name: "orders-7d9f8b6c5-x2x4q".into(),
            namespace: "default".into(),
            annotations,
        }),
    }
}

/// A successful answer, as the ingress sends it.
fn ok_response() -> ConnResponse {
    ConnResponse {
        endpoint_id: "ep_2r5Xr9f6nQy1Jm3kTqP0aZ8bC4d".into(),
        proto: "tcp".into(),
        notices: vec![Notice {
            message: "bound endpoint reached through the binding ingress".into(),
        }],
        ..Default::default()
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    for (name, req) in [
        ("conn_request", plain_request()),
        ("conn_request_pod_identity", request_with_identity()),
    ] {
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| wire::encode_frame(black_box(&req)))
        });
        let frame = wire::encode_frame(&req).expect("a valid request encodes");
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| wire::decode_frame::<ConnRequest>(black_box(&frame)))
        });
    }
    let resp = ok_response();
    g.bench_function("encode/conn_response", |b| {
        b.iter(|| wire::encode_frame(black_box(&resp)))
    });
    let frame = wire::encode_frame(&resp).expect("a valid response encodes");
    g.bench_function("decode/conn_response", |b| {
        b.iter(|| wire::decode_frame::<ConnResponse>(black_box(&frame)))
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
