//! Arbitrary bytes from a pool into the miner-side V1 client: never a panic, and nothing it
//! hands to the hashers breaks the extranonce bounds. `cargo fuzz run v1_client`
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v1::client::MAX_EXTRANONCE_LEN;
use quarry_stratum::v1::{Client, ClientConfig, ClientEvent};

fuzz_target!(|data: &[u8]| {
    let mut client = Client::new(ClientConfig {
        user: "fuzz".into(),
        password: "x".into(),
        agent: "fuzz/1".into(),
        version_rolling: Some(0x1fff_e000),
    });
    // A valid subscribe answer first, so that jobs and answers are reached too.
    client.handle_bytes(b"{\"id\":2,\"result\":[[],\"01020304\",8],\"error\":null}\n");
    for chunk in data.chunks(61) {
        client.handle_bytes(chunk);
        let _ = client.submit("1", &[0; 8], 0, 0, Some(0x2000_0000));
        while let Some(event) = client.poll_event() {
            if let ClientEvent::Work(work) = event {
                assert!(work.extranonce1.len() <= MAX_EXTRANONCE_LEN);
                assert!((1..=MAX_EXTRANONCE_LEN).contains(&work.extranonce2_len));
            }
        }
        while client.poll_transmit().is_some() {}
        if client.close_reason().is_some() {
            break;
        }
    }
});
