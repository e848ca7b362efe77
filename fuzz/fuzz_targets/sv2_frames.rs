//! Arbitrary bytes as plaintext SV2 frames and as message payloads: never a panic, and every
//! message that decodes encodes back to a frame that decodes to the same message.
//! `cargo fuzz run sv2_frames`
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v2::frame::PlainFrameReader;
use quarry_stratum::v2::message::Message;

fuzz_target!(|data: &[u8]| {
    let mut reader = PlainFrameReader::new(64 * 1024);
    reader.push(data);
    while let Ok(Some(frame)) = reader.next_frame() {
        if let Ok(message) = Message::decode(&frame) {
            let again = message.to_frame_bytes();
            let mut check = PlainFrameReader::new(1 << 24);
            check.push(&again);
            let frame = check.next_frame().expect("bounded").expect("complete");
            // NaN hashrates do not compare equal; compare the bytes instead.
            let reencoded = Message::decode(&frame).expect("our own encoding decodes");
            assert_eq!(reencoded.to_frame_bytes(), again);
        }
    }
});
