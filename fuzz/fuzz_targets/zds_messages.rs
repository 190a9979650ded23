//! Fuzzes the node agent's reading of what a ztunnel sends over ZDS
//! (`node_agent::zds::{read_hello, read_answer}`): the input is cut into
//! datagrams (a length byte, then that many bytes; at most `MAX_MESSAGE`
//! each, as the transport allows), the first read as the hello and the rest
//! as answers, as in one connection's life.
//!
//! Invariants:
//! - never a panic, whatever the bytes;
//! - an answer is an Ack exactly when the bytes decode as a
//!   `WorkloadResponse` holding an Ack with an empty error, a NACK exactly
//!   when that error is non-empty, and the NACK text is that error;
//! - a hello is accepted exactly when the bytes decode as a `ZdsHello`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_api::istio::workload::zds::{WorkloadResponse, ZdsHello, workload_response};
use mesh_core::zds::{Datagram, MAX_MESSAGE};
use node_agent::zds::{read_answer, read_hello};
use prost::Message;

fn datagrams(mut input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = input.split_first() {
        let take = (len as usize).min(rest.len()).min(MAX_MESSAGE);
        out.push(rest[..take].to_vec());
        input = &rest[take..];
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let mut datagrams = datagrams(input).into_iter();
    let Some(hello) = datagrams.next() else {
        return;
    };
    let read = read_hello(&Datagram {
        bytes: hello.clone(),
        fd: None,
    });
    assert_eq!(read.is_ok(), ZdsHello::decode(hello.as_slice()).is_ok());
    for bytes in datagrams {
        let answer = read_answer(&Datagram {
            bytes: bytes.clone(),
            fd: None,
        });
        let expected = WorkloadResponse::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.payload)
            .map(|workload_response::Payload::Ack(ack)| ack.error);
        match (answer, expected) {
            (Ok(Ok(())), Some(error)) => assert!(error.is_empty()),
            (Ok(Err(text)), Some(error)) => {
                assert!(!text.is_empty());
                assert_eq!(text, error);
            }
            (Err(e), None) => assert!(!e.to_string().is_empty()),
            (got, want) => panic!("read_answer gave {got:?} where the message holds {want:?}"),
        }
    }
});
