//! Arbitrary bytes into the SV1 → SV2 proxy from both sides: miner lines (V1 JSON) and upstream
//! bytes before and during the handshake. Never a panic. `cargo fuzz run proxy`
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_stratum::proxy::{Proxy, ProxyConfig};
use quarry_stratum::v2::AuthorityKeypair;

fuzz_target!(|data: &[u8]| {
    let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
    let (first, rest) = data.split_at(data.len() / 2);
    for aggregate in [true, false] {
        let mut proxy = Proxy::new(ProxyConfig {
            user_identity: "fuzz".into(),
            aggregate,
            ..ProxyConfig::default()
        });
        proxy.downstream_connected(1);
        proxy.downstream_connected(2);
        proxy.downstream_bytes(1, b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n", 1_800_000_000);
        for chunk in first.chunks(61) {
            proxy.downstream_bytes(2, chunk, 1_800_000_000);
        }
        proxy
            .upstream_connected(&authority.public, ("fuzz".into(), 1))
            .expect("initiator");
        for chunk in rest.chunks(89) {
            proxy.upstream_bytes(chunk, 1_800_000_000);
        }
        proxy.downstream_closed(2);
        proxy.upstream_lost("fuzz");
        while proxy.poll_event().is_some() {}
        while proxy.poll_upstream_transmit().is_some() {}
    }
});
