//! Arbitrary bytes as plaintext SV2 frames and as message payloads: never a panic, and every
//! message that decodes encodes back to a frame that decodes to the same message.
//! `cargo fuzz run sv2_frames`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::sv2_frames::run(data));
