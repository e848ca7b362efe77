//! Arbitrary bytes into a Template Provider connection, raw and as frames encrypted after a real
//! handshake (with a template to serve): never a panic. `cargo fuzz run tp_session`
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v2::noise::InitiatorHandshake;
use quarry_stratum::v2::template_provider::{TpConfig, TpSession};
use quarry_stratum::v2::AuthorityKeypair;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};

fuzz_target!(|data: &[u8]| {
    let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
    let config = Arc::new(TpConfig::new(authority.clone()));
    let now = quarry_stratum::Now::synced(1_800_000_000_000);
    let gbt: GetBlockTemplate = serde_json::from_str(
        r#"{"version":536870912,"previousblockhash":"0707070707070707070707070707070707070707070707070707070707070707",
            "transactions":[],"coinbasevalue":5000000000,"bits":"207fffff","curtime":1800000000,
            "height":201,"rules":["segwit"]}"#,
    )
    .expect("template");
    let template = Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("consistent"));

    let mut raw = TpSession::new(Arc::clone(&config), now);
    for chunk in data.chunks(97) {
        raw.handle_bytes(chunk, now);
    }
    raw.handle_timeout(now.plus_ms(3_600_000));

    let mut session = TpSession::new(config, now);
    session.handle_template(Arc::clone(&template));
    let mut initiator = InitiatorHandshake::new(&authority.public, 1 << 24).expect("key");
    session.handle_bytes(&initiator.start().expect("act1"), now);
    let Some(act2) = session.poll_transmit() else { return };
    let Ok(act2) = act2.try_into() else { return };
    let mut transport = initiator.finish(&act2, now.unix_secs() as u32).expect("trusted");
    let mut wire = Vec::new();
    for frame in data.split(|b| *b == 0xff) {
        if frame.len() >= 6 {
            let mut fixed = frame.to_vec();
            let len = (frame.len() - 6) as u32;
            fixed[3..6].copy_from_slice(&len.to_le_bytes()[..3]);
            transport.encrypt(&fixed, &mut wire);
        }
    }
    session.handle_bytes(&wire, now);
    session.handle_template(template);
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
});
