//! The gRPC codec of the delta ADS stream: requests are decoded by prost;
//! responses are [`PushResponse`]s, written from the snapshot's shared bytes.

use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

use super::PushResponse;

#[derive(Clone, Copy, Debug, Default)]
pub struct AdsCodec;

impl Codec for AdsCodec {
    type Encode = PushResponse;
    type Decode = DeltaDiscoveryRequest;
    type Encoder = PushEncoder;
    type Decoder = ProstDecoder<DeltaDiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        PushEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PushEncoder;

impl Encoder for PushEncoder {
    type Item = PushResponse;
    type Error = Status;

    fn encode(&mut self, item: PushResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // Room for the whole message at once: growing by doubling would hold
        // up to twice a large first response per client.
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}
