//! Fuzzes `ambit-cni`'s reading of its input: the network configuration on
//! stdin (`parse_conf`, `result_ips`), `CNI_ARGS` (`parse_args`), and whole
//! plugin runs (`plugin::run`) on paths that never reach a node agent.
//!
//! The first byte picks the mode; the rest is the input:
//! - 0: `parse_conf`. A refusal has code 1, 6 or 7 and a message; an
//!   accepted configuration has a supported version, a non-empty name and
//!   type, a non-zero timeout and an object (or no) `prevResult`, whose IPs
//!   `result_ips` reads without panicking.
//! - 1: `parse_args` on the bytes as text. Accepted pairs have non-empty
//!   keys and no `;`; a refusal has code 4.
//! - 2..: `run` with the bytes as stdin and an environment that stops before
//!   any socket: VERSION; ADD of a container that is not a pod (no
//!   `K8S_POD_*`), which passes `prevResult` through; CHECK without
//!   `CNI_CONTAINERID`; an unknown command. The output is always JSON (or
//!   empty only where the spec says so): a result with exit 0, or an error
//!   object with `code`, `msg`, `details`, `cniVersion` and exit 1; ADD's
//!   result equals the input's `prevResult`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::cni::plugin::{self, SUPPORTED_VERSIONS, parse_args, parse_conf, result_ips};
use serde_json::Value;

fn env_for(mode: u8) -> Vec<(&'static str, &'static str)> {
    match mode % 4 {
        0 => vec![("CNI_COMMAND", "VERSION")],
        1 => vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/fuzz"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1"),
        ],
        2 => vec![("CNI_COMMAND", "CHECK"), ("CNI_IFNAME", "eth0")],
        _ => vec![("CNI_COMMAND", "GC")],
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    match mode {
        0 => match parse_conf(rest) {
            Ok(conf) => {
                assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
                assert!(!conf.name.is_empty() && !conf.plugin_type.is_empty());
                assert!(!conf.timeout.is_zero());
                if let Some(prev) = &conf.prev_result {
                    assert!(prev.is_object());
                    let _ = result_ips(prev);
                }
            }
            Err(e) => {
                assert!([1, 6, 7].contains(&e.code), "code {}", e.code);
                assert!(!e.msg.is_empty());
            }
        },
        1 => {
            let text = String::from_utf8_lossy(rest);
            match parse_args(&text) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        assert!(!k.is_empty() && !k.contains(';') && !v.contains(';'));
                    }
                }
                Err(e) => assert_eq!(e.code, 4),
            }
        }
        _ => {
            let env = env_for(mode);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let outcome = runtime.block_on(plugin::run(
                |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()),
                rest,
            ));
            let out: Value = serde_json::from_str(&outcome.stdout)
                .unwrap_or_else(|e| panic!("output is not JSON ({e}): {:?}", outcome.stdout));
            if outcome.exit_code == 0 {
                assert!(out.get("code").is_none());
                if mode % 4 == 1 {
                    let prev = parse_conf(rest).expect("accepted").prev_result;
                    match prev {
                        Some(prev) => assert_eq!(out, prev),
                        None => assert!(out.get("cniVersion").is_some()),
                    }
                }
            } else {
                assert_eq!(outcome.exit_code, 1);
                assert!(out["code"].as_u64().is_some_and(|c| c > 0));
                assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()));
                assert!(out.get("details").is_some());
                assert!(out["cniVersion"].is_string());
            }
        }
    }
});
