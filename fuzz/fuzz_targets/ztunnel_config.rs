//! Fuzzes the ztunnel YAML config parser (`ztunnel::config::Config::parse`).
//!
//! Invariants:
//! - `parse` never panics: it returns Ok, or Err whose message is non-empty;
//! - an accepted config serialized with serde_yaml parses again (Ok), and
//!   serializing that second config gives the same YAML (the first
//!   serialization may normalise, e.g. durations to milliseconds; after that
//!   the text is a fixed point, i.e. nothing changes meaning on a round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::config::{Config, ConfigError};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let config = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            let message = match &e {
                ConfigError::Parse { message, .. } | ConfigError::Invalid { message, .. } => {
                    message.as_str()
                }
                ConfigError::Read { .. } => panic!("parse returned a read error: {e}"),
            };
            assert!(!message.trim().is_empty(), "empty error message: {e:?}");
            return;
        }
    };
    let yaml = serde_yaml::to_string(&config)
        .unwrap_or_else(|e| panic!("cannot serialize an accepted config: {e}\n{config:#?}"));
    let again = Config::parse(&yaml).unwrap_or_else(|e| {
        panic!("the serialized config is refused: {e}\n--- input\n{text}\n--- serialized\n{yaml}")
    });
    let yaml2 = serde_yaml::to_string(&again).expect("serialize the reparsed config");
    assert_eq!(
        yaml, yaml2,
        "serialization is not a fixed point\n--- input\n{text}"
    );
});
