//! The `DeltaDiscoveryResponse` as the server holds it until it is written:
//! the resources are the snapshot's own encoded `Resource` messages, shared,
//! so a response to 100 clients holds each resource once, not 100 times, and
//! encoding is copying bytes into the frame.

use std::sync::Arc;

use bytes::BufMut;
use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::Message;

use super::Resource;

/// Field number of `DeltaDiscoveryResponse.resources`.
const RESOURCES_FIELD: u32 = 2;
/// Protobuf wire type of a length-delimited field.
const LENGTH_DELIMITED: u32 = 2;

/// One resource of a response: its name, and the resource shared with the
/// snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SentResource {
    pub name: Arc<str>,
    pub resource: Arc<Resource>,
}

/// A delta response, encoded on the wire exactly as the
/// `DeltaDiscoveryResponse` with the same fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushResponse {
    pub type_url: String,
    pub nonce: String,
    pub resources: Vec<SentResource>,
    pub removed_resources: Vec<String>,
}

impl PushResponse {
    /// The fields other than `resources`, as a prost message.
    fn head(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            removed_resources: self.removed_resources.clone(),
            ..Default::default()
        }
    }

    /// Length of the encoded message in bytes.
    pub fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| field_len(r.resource.wire.len()))
            .sum();
        self.head().encoded_len() + resources
    }

    /// Appends the encoded message to `buf`. Fields may come in any order on
    /// the wire; the head goes first, then each resource's shared bytes.
    pub fn encode(&self, buf: &mut impl BufMut) {
        // Encoding into a `BufMut` with room only fails for lack of room.
        let _ = self.head().encode(buf);
        for r in &self.resources {
            let wire = &r.resource.wire;
            put_varint(
                u64::from((RESOURCES_FIELD << 3) | LENGTH_DELIMITED),
                &mut *buf,
            );
            put_varint(wire.len() as u64, &mut *buf);
            buf.put_slice(wire);
        }
    }

    /// The message as prost would build it (tests and tools; decodes every
    /// resource).
    pub fn to_message(&self) -> DeltaDiscoveryResponse {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes);
        DeltaDiscoveryResponse::decode(bytes.as_slice())
            .expect("a response encodes to a valid DeltaDiscoveryResponse")
    }
}

/// Bytes of a length-delimited field of `len` bytes with a one-byte key.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(value: u64) -> usize {
    // 7 bits per byte; at least one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut value: u64, buf: &mut impl BufMut) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::envoy::service::discovery::v3::Resource as WireResource;

    fn sent(name: &str, body_len: usize) -> SentResource {
        let body = prost_types::Any {
            type_url: "type.googleapis.com/test.Thing".into(),
            value: vec![7; body_len],
        };
        SentResource {
            name: Arc::from(name),
            resource: Arc::new(Resource::from_body(name, body)),
        }
    }

    #[test]
    fn encodes_as_the_prost_message_with_the_same_fields() {
        // Bodies around the one- and two-byte length boundaries, and a large one.
        let response = PushResponse {
            type_url: "type.googleapis.com/test.Thing".into(),
            nonce: "abc-1".into(),
            resources: vec![
                sent("a", 0),
                sent("b", 100),
                sent("c", 200),
                sent("d", 70_000),
            ],
            removed_resources: vec!["gone".into(), "also-gone".into()],
        };
        let expected = DeltaDiscoveryResponse {
            type_url: response.type_url.clone(),
            nonce: response.nonce.clone(),
            removed_resources: response.removed_resources.clone(),
            resources: response
                .resources
                .iter()
                .map(|r| WireResource {
                    name: r.name.to_string(),
                    version: r.resource.version.clone(),
                    resource: Some(r.resource.body()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        response.encode(&mut bytes);
        assert_eq!(bytes.len(), response.encoded_len());
        assert_eq!(bytes.len(), expected.encoded_len());
        assert_eq!(
            DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap(),
            expected
        );
        assert_eq!(response.to_message(), expected);
    }

    #[test]
    fn varints_match_protobuf() {
        let cases: [(u64, &[u8]); 7] = [
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (value, expected) in cases {
            let mut ours = Vec::new();
            put_varint(value, &mut ours);
            assert_eq!(ours, expected, "{value}");
            assert_eq!(varint_len(value), expected.len(), "{value}");
        }
    }
}
